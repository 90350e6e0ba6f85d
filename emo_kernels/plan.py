"""A prepared plan of many iRMBs: ``IRMBChain``, ``irmb_inference`` over a chain of blocks.

An object, not an op: the blocks' arguments are validated once, at construction; a call checks
only ``x`` and asks the dispatcher (``emo_kernels.dispatch.resolve_chain``) whether the selected
backend runs a whole chain in one call (the ``cpu`` backend does: one C++ call, no Python
between blocks); otherwise it calls the public op ``irmb_inference`` block by block.
"""
import torch

from . import dispatch
from .ops._checks import FLOAT_DTYPES, check_int, check_kwargs, check_tensor
from .ops.irmb_inference import ARG_NAMES, KEYWORDS, OP, irmb_inference, validate


class IRMBChain:
    """``irmb_inference`` over a chain of blocks (the output of one is the input of the next),
    prepared once: the arguments are validated at construction, a call checks only ``x``.

    ``blocks``: a list of ``(args, kwargs)``, the arguments of ``irmb_inference`` after x:
    ``args = (w_exp, b_exp, w_dw, b_dw, w_proj)``, kwargs its keyword arguments.
    ``chain(x, outputs=(i, j, ...))`` returns the outputs of blocks i, j, ... (increasing;
    default: the last block's). The ``cpu`` backend runs the whole chain as one C++ call (no
    Python between blocks), on copies of the weights prepared at the first call (the 1x1
    weights packed for its GEMM kernel, the depthwise weights transposed) and remade when a
    weight tensor was modified in place since (version counters; inference tensors have none:
    an in-place change of one, inside ``torch.inference_mode``, is not seen -- build a new
    chain); elsewhere the chain calls ``irmb_inference`` block by block.
    """

    def __init__(self, blocks, in_channels, dtype, device):
        check_int("in_channels", in_channels, min=1)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        if not blocks:
            raise ValueError("IRMBChain needs at least one block")
        self.blocks = []
        c = in_channels
        probe_hw = 7
        for i, block in enumerate(blocks):
            try:
                args, kwargs = _block_args(block)
                probe = torch.empty(1, c, probe_hw, probe_hw, dtype=dtype, device=device)
                validate(probe, *args, **kwargs)
            except (TypeError, ValueError) as e:
                raise type(e)(f"block {i}: {e}") from None
            kwargs.setdefault("act", "silu")
            kwargs.setdefault("stride", 1)
            kwargs.setdefault("skip", False)
            self.blocks.append((args, kwargs))
            c = args[4].shape[0]
        self.in_channels, self.out_channels = in_channels, c
        self.dtype, self.device = dtype, torch.device(device)
        self.tensors = [t for a, k in self.blocks for t in (*a, *k.values())
                        if isinstance(t, torch.Tensor)]
        self.kernel_sizes = {a[2].shape[-1] for a, _ in self.blocks}

    def __len__(self):
        return len(self.blocks)

    def prepared(self, key, make):
        """``make(self)``, a backend's own form of the blocks' weights (packed, transposed, on
        the device), made at the first call and cached under ``key``; made again when one of
        the chain's tensors was modified in place since (version counters). Inference tensors
        have none: outside ``torch.inference_mode`` they cannot be modified in place, and
        ``emo.InferencePlan`` holds such copies on purpose (a frozen plan)."""
        cache = self.__dict__.setdefault("_prepared", {})
        hit = cache.get(key)
        if hit is not None and [t._version for t in hit[0]] == hit[1]:
            return hit[2]
        # versions read BEFORE preparing: a write that lands meanwhile (another thread) leaves
        # the result stale for this call at most; the next call sees it and prepares again
        watch = [t for t in self.tensors if not t.is_inference()]
        versions = [t._version for t in watch]
        value = make(self)
        cache[key] = (watch, versions, value)
        return value

    def __call__(self, x, outputs=None):
        check_tensor("x", x, dim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the chain expects {self.in_channels} input channels, got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise TypeError(f"the chain's weights are {self.dtype} on {self.device}, the input is "
                            f"{x.dtype} on {x.device}")
        outputs = [len(self) - 1] if outputs is None else _check_outputs(outputs, len(self))
        run = dispatch.resolve_chain(OP, x, self, outputs)
        if run is not None:
            return run(x, self, outputs)
        return self._block_by_block(x, outputs)

    def _block_by_block(self, x, outputs):
        outs, want = [], set(outputs)
        for i, (args, kwargs) in enumerate(self.blocks):
            x = irmb_inference(x, *args, **kwargs)
            if i in want:
                outs.append(x)
        return outs


def _block_args(block):
    """A chain block as (args tuple, kwargs dict), checked for form, arity and keywords."""
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and
            isinstance(block[0], (tuple, list)) and isinstance(block[1], dict)):
        raise TypeError(f"a block must be an (args, kwargs) pair: a tuple of {ARG_NAMES} and a "
                        f"dict of keyword arguments, got {block!r:.80}")
    args, kwargs = tuple(block[0]), dict(block[1])
    if len(args) != len(ARG_NAMES):
        raise TypeError(f"args must be the {len(ARG_NAMES)} arguments {ARG_NAMES}, got "
                        f"{len(args)} values")
    check_kwargs("irmb_inference", kwargs, KEYWORDS)
    return args, kwargs


def _check_outputs(outputs, n):
    """Chain output indices: an iterable of ints (not bools, floats or a str), increasing, in
    [0, n)."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
        raise TypeError(f"outputs must be a list of block indices (ints), got {outputs!r}")
    outputs = list(outputs)
    bad = [i for i in outputs if isinstance(i, bool) or not hasattr(type(i), "__index__")]
    if bad:
        raise TypeError(f"outputs must be ints (block indices), got {bad[0]!r} "
                        f"({type(bad[0]).__name__}) in {outputs!r}")
    outputs = [i.__index__() for i in outputs]
    if any(b <= a for a, b in zip(outputs, outputs[1:])) or \
            any(not 0 <= i < n for i in outputs):
        raise ValueError(f"outputs must be increasing block indices in [0, {n}), got {outputs}")
    return outputs

