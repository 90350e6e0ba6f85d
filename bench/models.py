"""Whole-model pieces shared by the benchmarks: EMO models and inputs on a device, dtype and
layout, and the step a benchmark times (one inference forward, or one SGD training step),
optionally under an emo_kernels backend.
"""
import torch

import emo
import emo_kernels


def memory_format(layout):
    return torch.channels_last if layout == "nhwc" else torch.contiguous_format


def make_step(model, x, train):
    """A closure running one inference forward, or one SGD training step (fwd+bwd+update)."""
    if not train:
        def step():
            with torch.inference_mode():
                model(x)
        return step
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def build_model(name, device, dtype, layout="nchw", train=False, fused=False, like=None):
    """An EMO model on ``device``/``dtype``/layout; with ``like``, the same weights as it."""
    m = emo.create_model(name, fused=fused)
    if like is not None:
        m.load_state_dict(like.state_dict())
    m = m.to(device=device, dtype=dtype, memory_format=memory_format(layout))
    m.train(train)
    return m


def generator(device, seed):
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def randn(shape, g, device, dtype, scale=1.0):
    """Random normal drawn on the device itself (fast for GPU-sized inputs), then cast."""
    return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)


def model_input(batch, size, device, dtype, layout="nchw", seed=0):
    x = randn((batch, 3, size, size), generator(device, seed), device, dtype)
    return x.contiguous(memory_format=memory_format(layout))


class BackendStep:
    """Run ``step`` with an emo_kernels backend selected (None: leave the selection alone)."""

    def __init__(self, step, backend=None):
        self.step, self.backend = step, backend

    def __call__(self):
        if self.backend is None:
            return self.step()
        with emo_kernels.use_backend(self.backend):
            return self.step()
