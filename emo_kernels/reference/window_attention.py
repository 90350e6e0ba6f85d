"""Pure-PyTorch reference of ``window_attention``: the CPU fallback and the test oracle.

EMO's strided-window multi-head attention, exactly as the official iRMB computes it:
the map is zero-padded on the right/bottom to Hp, Wp (multiples of the window size ws),
n1 = Hp / ws, n2 = Wp / ws, and token (i, j) of window (a, b) is pixel (i*n1 + a, j*n2 + b).
Within each window and head: softmax(q k^T * scale) v over the ws*ws tokens, with NO mask:
a padded pixel is a real key whose key vector is ``k_pad`` (the qk conv's bias, since
the conv saw a zero input there) and whose value is ``v_pad`` (zero in EMO). The result is
cropped to H, W. EMOv2's forms: the contiguous partition (token (i, j) of window (a, b) is
pixel (a*ws + i, b*ws + j)), the hybrid sum of both partitions' results, value heads of
Cv / heads channels, padded values act(b_v) (given as ``v_pad``).

Eager PyTorch pads, copies into window order, copies into head order, materialises the
(ws^2 x ws^2) score matrix, softmaxes it and copies back twice.
"""
def window_partition(t, ws):
    """(B, C, Hp, Wp) -> (B, n1*n2, C, ws*ws) with EMO's strided window membership."""
    B, C, Hp, Wp = t.shape
    n1, n2 = Hp // ws, Wp // ws
    t = t.reshape(B, C, ws, n1, ws, n2).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(B, n1 * n2, C, ws * ws)


def window_unpartition(t, n1, n2, ws):
    """Inverse of window_partition: (B, n1*n2, C, ws*ws) -> (B, C, Hp, Wp)."""
    B, _, C, _ = t.shape
    t = t.reshape(B, n1, n2, C, ws, ws).permute(0, 3, 4, 1, 5, 2)
    return t.reshape(B, C, ws * n1, ws * n2)


def close_partition(t, ws):
    """(B, C, Hp, Wp) -> (B, n1*n2, C, ws*ws) with contiguous ws x ws windows (EMOv2's
    "close" partition)."""
    B, C, Hp, Wp = t.shape
    n1, n2 = Hp // ws, Wp // ws
    t = t.reshape(B, C, n1, ws, n2, ws).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(B, n1 * n2, C, ws * ws)


def close_unpartition(t, n1, n2, ws):
    """Inverse of close_partition: (B, n1*n2, C, ws*ws) -> (B, C, Hp, Wp)."""
    B, _, C, _ = t.shape
    t = t.reshape(B, n1, n2, C, ws, ws).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(B, C, n1 * ws, n2 * ws)


def window_attention_ref(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                         v_pad=None, partition="remote"):
    B, C, H, W = q.shape
    Cv = v.shape[1]
    ws = window_size
    scale = head_dim ** -0.5 if scale is None else scale
    heads = C // head_dim
    pad_b, pad_r = (-H) % ws, (-W) % ws
    Hp, Wp = H + pad_b, W + pad_r
    n1, n2 = Hp // ws, Wp // ws

    def pad(t, fill=None):
        if pad_b == 0 and pad_r == 0:
            return t
        c = t.shape[1]
        out = t.new_zeros(B, c, Hp, Wp)
        if fill is not None:
            out = out + fill.reshape(1, c, 1, 1).to(t.dtype)
        out = out.clone()
        out[:, :, :H, :W] = t
        return out

    qp, kp, vp = pad(q), pad(k, k_pad), pad(v, v_pad)

    def attend(part, unpart):
        def heads_view(t):  # (B, nw, c, L) -> (B, nw, heads, L, c / heads)
            t = part(t, ws)
            return t.reshape(B, n1 * n2, heads, t.shape[2] // heads, ws * ws).transpose(-1, -2)

        qh, kh, vh = heads_view(qp), heads_view(kp), heads_view(vp)
        attn = ((qh @ kh.transpose(-1, -2)) * scale).softmax(dim=-1)
        o = (attn @ vh).transpose(-1, -2).reshape(B, n1 * n2, Cv, ws * ws)
        return unpart(o, n1, n2, ws)[:, :, :H, :W]

    if partition == "remote":
        return attend(window_partition, window_unpartition)
    if partition == "close":
        return attend(close_partition, close_unpartition)
    return attend(window_partition, window_unpartition) + attend(close_partition,
                                                                 close_unpartition)
