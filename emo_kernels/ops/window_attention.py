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

Memory traffic: the reference writes the padded copy, two window/head-order copies of q, k
and v, the (ws^2 x ws^2) scores and probabilities per window and head, and two copies of the
output; a fused kernel reads q, k and v once and writes the output once: 4*B*C*H*W elements.
"""
from .. import backends, cpu
from ..reference import window_attention_ref
from ._checks import check_tensor

OP = "window_attention"


def _validate(q, k, v, k_pad, head_dim, window_size):
    check_tensor("q", q, dim=4)
    check_tensor("k", k, shape=q.shape, like=q)
    check_tensor("v", v, shape=q.shape, like=q)
    C = q.shape[1]
    check_tensor("k_pad", k_pad, shape=(C,), like=q, optional=True)
    if not isinstance(head_dim, int) or head_dim < 1 or C % head_dim:
        raise ValueError(f"head_dim must be a positive int dividing C={C}, got {head_dim!r}")
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"q must have a non-empty spatial map, got {tuple(q.shape)}")


def window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    _validate(q, k, v, k_pad, head_dim, window_size)
    kwargs = dict(head_dim=head_dim, window_size=window_size, scale=scale)
    fn = backends.resolve(OP, q, k, v, k_pad, **kwargs)
    return fn(q, k, v, k_pad, **kwargs)


backends.register(OP, "torch", window_attention_ref)
backends.register(OP, "cpu", cpu.window_attention_cpu, cpu.window_attention_can_run)
