"""Public op ``window_attention``: EMO's strided-window multi-head attention, and EMOv2's
contiguous and hybrid (strided + contiguous) forms.

    out = crop(unpartition(softmax(q k^T * scale) v))   per head, per window
          (partition="hybrid": the sum of the strided and the contiguous results)

Arguments
    q, k     (B, C, H, W), same dtype/device, any strides (q and k may be channel slices of
             one (B, 2C, H, W) qk tensor). C = heads * head_dim.
    v        (B, Cv, H, W): Cv = C (EMO) or any multiple of the heads (EMOv2's value heads,
             Cv / heads channels each, are wider than the query/key heads).
    k_pad    (C,) or None (zeros): the key vector of a padded pixel -- the qk conv's bias
             for the k half, since the official code runs that conv on the zero-padded map.
             Padded pixels are unmasked keys.
    v_pad    (Cv,) or None (zeros, EMO): the value vector of a padded pixel. EMOv2 computes v
             on the zero-padded map too: its padded values are act(b_v).
    head_dim channels per query/key head; window_size: 7 in EMO (7 or 8 in EMOv2); scale
             defaults to head_dim ** -0.5.
    partition "remote" (EMO's strided windows), "close" (contiguous ws x ws blocks) or
             "hybrid" (EMOv2: both, outputs summed).
Windows: the map is padded right/bottom to Hp, Wp (multiples of ws), n1 = Hp/ws,
n2 = Wp/ws; token (i, j) of window (a, b) is pixel (i*n1 + a, j*n2 + b) ("remote") or
(a*ws + i, b*ws + j) ("close"). Returns (B, Cv, H, W).

Backends (emo_kernels/backends/): ``torch`` (the reference, every case), ``cpu`` (C++,
inference, every case), ``triton`` (the custom op ``emo_kernels::window_attention_triton`` with
a Triton backward: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for tests; head_dim <=
64, value heads <= 128 channels, window_size <= 8), ``cuda`` (csrc/cuda/window_attention.cu:
head_dim <= 64, value heads <= 128 channels). Every backend runs EMOv2's forms.

Memory traffic: the reference writes the padded copy, two window/head-order copies of q, k
and v, the (ws^2 x ws^2) scores and probabilities per window and head, and two copies of the
output (per partition); a fused kernel reads q, k and v once per partition and writes the
output once per partition: (2C + 2Cv) * B * H * W elements (hybrid: twice, the second pass
adding into the output).
"""
from .. import dispatch
from ._checks import check_channels, check_int, check_number, check_tensor

OP = "window_attention"


PARTITIONS = ("remote", "close", "hybrid")


def _validate(q, k, v, k_pad, head_dim, window_size, scale=None, v_pad=None,
              partition="remote"):
    check_tensor("q", q, dim=4)
    check_tensor("k", k, shape=q.shape, like=q)
    check_tensor("v", v, dim=4, like=q)
    C = q.shape[1]
    check_channels("q", C)
    check_tensor("k_pad", k_pad, shape=(C,), like=q, optional=True)
    check_head_dim(head_dim, C)
    check_int("window_size", window_size, min=1)
    check_number("scale", scale, optional=True)
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"q must have a non-empty spatial map, got {tuple(q.shape)}")
    heads, Cv = C // head_dim, v.shape[1]
    if v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:] or Cv < 1 or Cv % heads:
        raise ValueError(f"v must be (B, Cv, H, W) like q {tuple(q.shape)} with Cv a positive "
                         f"multiple of the {heads} heads, got {tuple(v.shape)}")
    check_tensor("v_pad", v_pad, shape=(Cv,), like=q, optional=True)
    if not isinstance(partition, str) or partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")


def check_head_dim(head_dim, C):
    check_int("head_dim", head_dim, min=1)
    if C % head_dim:
        raise ValueError(f"head_dim must divide the channels C={C}, got {head_dim}")


def window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None, v_pad=None,
                     partition="remote"):
    _validate(q, k, v, k_pad, head_dim, window_size, scale, v_pad, partition)
    kwargs = dict(head_dim=head_dim, window_size=window_size, scale=scale)
    if v_pad is not None or partition != "remote":  # EMOv2's form: only then in the call
        kwargs.update(v_pad=v_pad, partition=partition)
    fn = dispatch.resolve(OP, q, k, v, k_pad, **kwargs)
    return fn(q, k, v, k_pad, **kwargs)

