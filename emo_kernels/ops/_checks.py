"""The validation layer of the public ops: one typed check per kind of argument, each raising
an error that names the argument, what was expected and what was given. The ops run these
before a backend is chosen, so every backend sees the same errors (TypeError for a wrong type
or dtype, ValueError for a wrong value or shape)."""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACTS = ("silu", "gelu", "none")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {v!r} ({type(v).__name__})")


def check_int(name, v, *, min=None):
    """An int (not a bool), at least ``min``."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
    if min is not None and v < min:
        raise ValueError(f"{name} must be an int >= {min}, got {v!r}")


def check_int_in(name, v, choices):
    if not _is_int(v):
        raise TypeError(f"{name} must be an int in {set(choices)}, got {v!r} ({type(v).__name__})")
    if v not in choices:
        raise ValueError(f"{name} must be one of {set(choices)}, got {v!r}")


def check_number(name, v, *, optional=False):
    """A real number (int or float, not a bool); None too when ``optional``."""
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {v!r} "
                        f"({type(v).__name__})")


def check_choice(name, v, choices):
    if not isinstance(v, str):
        raise TypeError(f"{name} must be one of {choices}, got {v!r} ({type(v).__name__})")
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")


def check_channels(name, n, what="channel"):
    """A channel (or head) count: zero is refused (no backend computes anything useful with it,
    and a kernel would divide by it)."""
    if n < 1:
        raise ValueError(f"{name} must have at least 1 {what}, got {n}")


def check_kwargs(where, kwargs, allowed):
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{where}: unknown keyword argument(s) {unknown}; expected some of "
                        f"{sorted(allowed)}")


def check_tensor(name, t, *, dim=None, shape=None, like=None, optional=False, dtype=None,
                 device=None):
    """A floating tensor; ``dim``/``shape`` its rank/shape; ``like``: same device and dtype as
    that tensor (the op's input); ``dtype``/``device``: a dtype (or tuple of allowed dtypes) /
    device it must have instead (``like`` checks only what they leave unsaid)."""
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} must be a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is None and like is not None:
        device = like.device
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if dtype is None and like is not None:
        dtype = like.dtype
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            given = f" (the input is {like.dtype})" if like is not None else ""
            raise TypeError(f"{name} must have dtype {' or '.join(map(str, allowed))}{given}, "
                            f"got {t.dtype}")


def check_weight_1x1(name, w, x, *, rows=None, cols=None, source="x"):
    """A 1x1-conv weight, (rows, cols) or (rows, cols, 1, 1), on x's device with x's dtype;
    ``cols``: the channels of ``source`` it reads. Returns (rows, cols)."""
    check_tensor(name, w, like=x)
    if w.dim() not in (2, 4) or w.dim() == 4 and tuple(w.shape[2:]) != (1, 1):
        raise ValueError(f"{name} must be (Cout, Cin) or (Cout, Cin, 1, 1), got {tuple(w.shape)}")
    if cols is not None and w.shape[1] != cols:
        raise ValueError(f"{name} expects {w.shape[1]} input channels but {source} has {cols}")
    if rows is not None and w.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} output channels, got shape {tuple(w.shape)}")
    check_channels(name, w.shape[0], "output channel")
    return w.shape[0], w.shape[1]


def bn_dtypes(x_dtype):
    """The dtypes BatchNorm parameters/statistics may have with input ``x_dtype``: x's own, or
    float32 with fp16/bf16 input (mixed precision, as nn.BatchNorm2d runs under autocast)."""
    if x_dtype in (torch.float16, torch.bfloat16):
        return (x_dtype, torch.float32)
    return (x_dtype,)
