"""Public op ``window_attention``: EMO's strided-window multi-head attention.

    out = crop(unpartition(softmax(q k^T * scale) v))   per head, per strided window

Arguments
    q, k, v  (B, C, H, W), same dtype/device, any strides (q and k may be channel slices of
             one (B, 2C, H, W) qk tensor). C = heads * head_dim.
    k_pad    (C,) or None (zeros): the key vector of a padded pixel -- the qk conv's bias
             for the k half, since the official code runs that conv on the zero-padded map.
             Padded pixels are unmasked keys with zero values.
    head_dim channels per head; window_size: 7 in EMO; scale defaults to head_dim ** -0.5.
Windows: the map is padded right/bottom to Hp, Wp (multiples of ws), n1 = Hp/ws,
n2 = Wp/ws; token (i, j) of window (a, b) is pixel (i*n1 + a, j*n2 + b).
Returns (B, C, H, W).

Backends (emo_kernels/backends/): ``torch`` (the reference), ``cpu`` (C++, inference),
``triton`` (the custom op ``emo_kernels::window_attention_triton`` with a Triton backward: CUDA
tensors, or CPU tensors under TRITON_INTERPRET=1 for tests; head_dim <= 64, window_size <= 8),
``cuda`` (csrc/cuda/window_attention.cu).

Memory traffic: the reference writes the padded copy, two window/head-order copies of q, k
and v, the (ws^2 x ws^2) scores and probabilities per window and head, and two copies of the
output; a fused kernel reads q, k and v once and writes the output once: 4*B*C*H*W elements.
"""
from .. import dispatch
from ._checks import check_channels, check_int, check_number, check_tensor

OP = "window_attention"


def _validate(q, k, v, k_pad, head_dim, window_size, scale=None):
    check_tensor("q", q, dim=4)
    check_tensor("k", k, shape=q.shape, like=q)
    check_tensor("v", v, shape=q.shape, like=q)
    C = q.shape[1]
    check_channels("q", C)
    check_tensor("k_pad", k_pad, shape=(C,), like=q, optional=True)
    check_head_dim(head_dim, C)
    check_int("window_size", window_size, min=1)
    check_number("scale", scale, optional=True)
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"q must have a non-empty spatial map, got {tuple(q.shape)}")


def check_head_dim(head_dim, C):
    check_int("head_dim", head_dim, min=1)
    if C % head_dim:
        raise ValueError(f"head_dim must divide the channels C={C}, got {head_dim}")


def window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    _validate(q, k, v, k_pad, head_dim, window_size, scale)
    kwargs = dict(head_dim=head_dim, window_size=window_size, scale=scale)
    fn = dispatch.resolve(OP, q, k, v, k_pad, **kwargs)
    return fn(q, k, v, k_pad, **kwargs)

