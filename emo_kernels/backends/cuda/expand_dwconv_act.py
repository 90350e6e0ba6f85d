"""cuda backend of ``expand_dwconv_act``: orchestration of the csrc/cuda/expand_dwconv_act.cu kernels.

Forward
    v = edc_expand_fwd(x)                       (skipped for the identity expansion: v = x)
    no BatchNorm / eval BatchNorm: BN is folded to a per-channel affine (scale, shift) and
        z = edc_dw_fwd(v, fused=True)           one kernel: dwconv + affine + SiLU + skip
    train BatchNorm:
        p = edc_dw_fwd(v, fused=False)          pre-norm p in fp32 (fp64 for fp64)
        mean, var of p per channel: torch (torch.var_mean), running stats updated in place
        exactly like F.batch_norm (unbiased variance for running_var)
        z = edc_epilogue_fwd(p, scale, shift, v)
Backward
    gq = grad_z * silu'(q) (edc_dq_bwd, recomputes p from v); the BatchNorm backward is folded
    into per-channel coefficients gp = ca*gq + cb*p + cc computed with torch from two
    per-channel sums; edc_dv_bwd (depthwise input grad + skip + activation grad),
    edc_dwweight_bwd, edc_expand_dx_bwd, edc_expand_dw_bwd do the rest; bias and BN-parameter
    gradients are per-channel sums (torch).
"""
import torch

from ...formulas import ACT_CODES, bn_scale_shift, update_running_stats
from ._common import acc_dtype, contig, device_reason, ops

ACT = ACT_CODES
_DIMS = (0, 2, 3)


def can_run_expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw=None, **kwargs):
    if kwargs.get("bn_process_group") is not None:
        return ("the cuda backend does not all-reduce BatchNorm statistics across processes "
                "(bn_process_group, SyncBatchNorm); the torch and triton backends do")
    return device_reason(x, w_exp, b_exp, w_dw, b_dw, kwargs.get("bn_weight"),
                         kwargs.get("bn_bias"), kwargs.get("running_mean"),
                         kwargs.get("running_var"))


class _ExpandDwconvAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var,
                act, stride, skip, bn_training, momentum, eps, emulate):
        K = ops(emulate)
        dtype, acc = x.dtype, acc_dtype(x.dtype)
        x = x.contiguous()
        cin = x.shape[1]
        w2 = None if w_exp is None else w_exp.reshape(w_exp.shape[0], cin).contiguous()
        cmid = cin if w2 is None else w2.shape[0]
        k = w_dw.shape[-1]
        w3 = w_dw.reshape(cmid, k, k).contiguous()
        b_exp, b_dw = contig(b_exp), contig(b_dw)
        v = x if w2 is None else K.edc_expand_fwd(x, w2, b_exp, ACT[act])

        use_bn = bn_weight is not None or running_mean is not None or bn_training
        scale = shift = mean = rstd = None
        n = 0
        if not use_bn:
            z = K.edc_dw_fwd(v, w3, b_dw, None, None, stride, skip, True)
        else:
            w = None if bn_weight is None else bn_weight.to(acc)
            b = None if bn_bias is None else bn_bias.to(acc)
            if bn_training:
                p = K.edc_dw_fwd(v, w3, b_dw, None, None, stride, False, False)
                n = p.numel() // p.shape[1]
                if n <= 1:
                    raise ValueError("Expected more than 1 value per channel when training, "
                                     f"got input size {tuple(p.shape)}")
                var, mean = torch.var_mean(p, dim=_DIMS, unbiased=False)
            else:
                mean, var = running_mean.to(acc), running_var.to(acc)
            rstd = (var + eps).rsqrt()
            scale, shift = bn_scale_shift(w, b, mean, var, eps)
            if bn_training:
                z = K.edc_epilogue_fwd(p, scale, shift, v, skip)
                if running_mean is not None:
                    update_running_stats(running_mean, running_var, mean, var, n, momentum)
            else:
                z = K.edc_dw_fwd(v, w3, b_dw, scale, shift, stride, skip, True)

        ctx.save_for_backward(x, w2, b_exp, w3, b_dw, v, scale, shift, mean, rstd,
                              None if bn_weight is None else bn_weight.to(acc))
        ctx.cfg = (act, stride, skip, use_bn, bn_training, n, emulate, dtype, acc,
                   None if w_exp is None else w_exp.shape,
                   None if bn_weight is None else bn_weight.dtype,
                   None if bn_bias is None else bn_bias.dtype)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gz):
        x, w2, b_exp, w3, b_dw, v, scale, shift, mean, rstd, w = ctx.saved_tensors
        (act, stride, skip, use_bn, bn_training, n, emulate, dtype, acc, w_exp_shape,
         bnw_dtype, bnb_dtype) = ctx.cfg
        K = ops(emulate)
        gz = gz.contiguous()
        k = w3.shape[-1]
        gq, p = K.edc_dq_bwd(v, w3, b_dw, scale, shift, gz, stride, use_bn)
        sum_gq = gq.sum(_DIMS)
        g_bnw = g_bnb = None
        ca = cb = cc = None
        if not use_bn:
            p = None
            g_bdw = sum_gq
        else:
            sum_gqx = rstd * ((gq * p).sum(_DIMS) - mean * sum_gq)  # sum(gq * (p - mean) * rstd)
            g_bnw, g_bnb = sum_gqx, sum_gq
            ca = scale
            if bn_training:
                wr = rstd if w is None else w * rstd
                cb = -wr * rstd * sum_gqx / n
                cc = -wr * sum_gq / n - cb * mean
                g_bdw = ca * sum_gq + cb * (mean * n) + cc * n
            else:
                p = None
                g_bdw = ca * sum_gq
        gu = K.edc_dv_bwd(x, w2, b_exp, w3, gz, gq, p, ca, cb, cc, ACT[act], stride, skip)
        g_wdw = K.edc_dwweight_bwd(v, gq, p, ca, cb, cc, k, stride)
        g_wdw = g_wdw.reshape(w3.shape[0], 1, k, k).to(dtype)
        if w2 is None:
            gx, g_wexp, g_bexp = gu.to(dtype), None, None
        else:
            gx = K.edc_expand_dx_bwd(w2, gu)
            g_wexp = K.edc_expand_dw_bwd(x, gu).to(dtype).reshape(w_exp_shape)
            g_bexp = None if b_exp is None else gu.sum(_DIMS).to(dtype)
        g_bdw = None if b_dw is None else g_bdw.to(dtype)
        g_bnw = None if bnw_dtype is None else g_bnw.to(bnw_dtype)
        g_bnb = None if bnb_dtype is None else g_bnb.to(bnb_dtype)
        return (gx, g_wexp, g_bexp, g_wdw, g_bdw, g_bnw, g_bnb) + (None,) * 9


def expand_dwconv_act_cuda(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1,
                           skip=False, bn_weight=None, bn_bias=None, running_mean=None,
                           running_var=None, bn_training=False, momentum=0.1, eps=1e-6,
                           emulate=False):
    """Same contract as emo_kernels.expand_dwconv_act (validated there). emulate=True runs the
    kernels' element functions on CPU tensors (testing only)."""
    return _ExpandDwconvAct.apply(x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, running_mean,
                                  running_var, act, stride, skip, bn_training, momentum, eps,
                                  emulate)
