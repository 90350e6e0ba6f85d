"""Fake (meta) implementations of the extension's ops, for torch.compile / FakeTensor tracing.

Registered for both namespaces once the extension is loaded (emo_kernels._ext.load_cuda). The
shapes and dtypes mirror csrc/cuda/bindings.cpp.
"""
import torch

from ...formulas import acc_dtype, dw_out_size

_done = set()


def _acc(t):
    return acc_dtype(t.dtype)


_out = dw_out_size


def _register(ns):
    lib = f"{ns}::"

    @torch.library.register_fake(lib + "edc_expand_fwd")
    def _(x, w_exp, b_exp, act):
        return x.new_empty(x.shape[0], w_exp.shape[0], x.shape[2], x.shape[3])

    @torch.library.register_fake(lib + "edc_dw_fwd")
    def _(v, w_dw, b_dw, scale, shift, stride, skip, fused):
        k = w_dw.shape[-1]
        shape = (v.shape[0], v.shape[1], _out(v.shape[2], k, stride), _out(v.shape[3], k, stride))
        return v.new_empty(shape, dtype=v.dtype if fused else _acc(v))

    @torch.library.register_fake(lib + "edc_epilogue_fwd")
    def _(p, scale, shift, v, skip):
        return v.new_empty(p.shape)

    @torch.library.register_fake(lib + "edc_dq_bwd")
    def _(v, w_dw, b_dw, scale, shift, grad_z, stride, need_p):
        acc = _acc(v)
        return [v.new_empty(grad_z.shape, dtype=acc),
                v.new_empty(grad_z.shape if need_p else (0,), dtype=acc)]

    @torch.library.register_fake(lib + "edc_dv_bwd")
    def _(x, w_exp, b_exp, w_dw, grad_z, grad_q, p, ca, cb, cc, act, stride, skip):
        return x.new_empty(x.shape[0], w_dw.shape[0], x.shape[2], x.shape[3], dtype=_acc(x))

    @torch.library.register_fake(lib + "edc_dwweight_bwd")
    def _(v, grad_q, p, ca, cb, cc, k, stride):
        return v.new_empty(v.shape[1], k, k, dtype=_acc(v))

    @torch.library.register_fake(lib + "edc_expand_dx_bwd")
    def _(w_exp, grad_u):
        return w_exp.new_empty(grad_u.shape[0], w_exp.shape[1], grad_u.shape[2], grad_u.shape[3])

    @torch.library.register_fake(lib + "edc_expand_dw_bwd")
    def _(x, grad_u):
        return x.new_empty(grad_u.shape[1], x.shape[1], dtype=_acc(x))

    @torch.library.register_fake(lib + "wa_fwd")
    def _(q, k, v, k_pad, v_pad, head_dim, window_size, scale, close):
        B, C, H, W = q.shape
        return [v.new_empty(v.shape), q.new_empty(B, C // head_dim, H, W, dtype=_acc(q))]

    @torch.library.register_fake(lib + "wa_bwd")
    def _(q, k, v, k_pad, v_pad, out, grad_out, lse, head_dim, window_size, scale, close):
        B, C, H, W = q.shape
        return [q.new_empty(B, C, H, W), q.new_empty(B, C, H, W), v.new_empty(v.shape),
                q.new_empty(C), q.new_empty(v.shape[1])]


def register():
    for ns in ("emo_kernels_cuda", "emo_kernels_cuda_emu"):
        if ns not in _done:
            _register(ns)
            _done.add(ns)
