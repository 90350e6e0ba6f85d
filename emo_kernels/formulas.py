"""The formulas that every backend, the references and the model share, written once.

* ``ACT_CODES``: the integer code of each activation in the compiled kernels (C++, CUDA,
  Triton constexprs): none 0, silu 1, gelu 2 (exact erf GELU).
* ``dw_padding`` / ``dw_out_size``: EMO's convolution padding ``ceil((k - stride) / 2)`` and
  the output size it gives (csrc/cpu/common.h and csrc/common.cuh hold the same one-line
  formula for the C++ side).
* ``acc_dtype``: the accumulation dtype of a kernel for an input dtype (float64 for float64,
  else float32).
* ``bn_scale_shift`` / ``fold_affine`` / ``fold_affine_into_next_1x1``: an eval BatchNorm as
  the per-channel map ``x * scale + shift``, and its fold into the convolution before it or
  into the 1x1 convolution after it.
* ``update_running_stats``: the running-statistics update of a training BatchNorm, exactly as
  ``F.batch_norm`` does it (unbiased variance).
"""
import torch

ACT_CODES = {"none": 0, "silu": 1, "gelu": 2}


def dw_padding(kernel_size, stride):
    """EMO's ConvNormAct padding: ``ceil((k - stride) / 2)``."""
    return -(-(kernel_size - stride) // 2)


def dw_out_size(n, kernel_size, stride):
    """Output length of a ``kernel_size`` convolution with ``dw_padding`` over ``n`` inputs."""
    return (n + 2 * dw_padding(kernel_size, stride) - kernel_size) // stride + 1


def acc_dtype(dtype):
    """The accumulation dtype of the kernels for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bn_scale_shift(weight, bias, mean, var, eps):
    """(scale, shift) of the BatchNorm map ``(x - mean) / sqrt(var + eps) * weight + bias``
    written as ``x * scale + shift`` (weight/bias None: 1/0). Differentiable."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = weight * scale
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def fold_affine(weight, bias, scale, shift):
    """Fold a per-output-channel ``y * scale + shift`` that follows a convolution into the
    convolution's (weight, bias): returns new tensors."""
    w = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    return w, (shift if bias is None else shift + bias * scale)


def fold_affine_into_next_1x1(weight, bias, scale, shift):
    """Fold a per-input-channel ``x * scale + shift`` that precedes a 1x1 convolution (weight
    (N, C[, 1, 1])) into it: ``W (s x + t) + b = (W s) x + (W t + b)``; returns new tensors."""
    w2 = weight.reshape(weight.shape[0], -1)
    b = w2 @ shift
    if bias is not None:
        b = b + bias
    return (w2 * scale[None, :]).reshape(weight.shape), b


def update_running_stats(running_mean, running_var, mean, var, n, momentum):
    """In place, without autograd: the update ``F.batch_norm`` makes in training from the batch
    ``mean`` and biased ``var`` over ``n`` values per channel (running_var takes the unbiased
    variance)."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        running_var.mul_(1 - momentum).add_(
            momentum * (var * (n / (n - 1))).to(running_var.dtype))
