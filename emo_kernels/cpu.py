"""The ``cpu`` backend: C++ kernels (csrc/cpu/emo_cpu.cpp) for CPU tensors, inference only.

* ``expand_dwconv_act`` (with the optional projection): the work is cut into chunks that fit
  the threads' L2 (several whole images, or a band of output rows of one image with its halo
  rows recomputed); per chunk, phase 1 runs the expansion GEMM with bias + activation applied
  on its accumulators and written straight into a zero-padded buffer, phase 2 the depthwise
  conv + bias + SiLU (+ skip) and the projection GEMM (+ residual, again in its epilogue), each
  phase split over all threads by rows (or by channels when the chunk has few pixels). v and z
  never leave cache. The GEMMs are the extension's own kernel (csrc/cpu/gemm.h) on weights
  packed into column panels: per call, or once per chain (``irmb_chain``). An eval-mode
  BatchNorm passed as arguments is folded into the depthwise weights here.
* ``window_attention``: reads q, k, v through their strides (channel slices of an NHWC qk
  tensor need no copy), one task per (image, window, head), scores and P.V in blocks of 4
  queries.
* ``irmb_inference``: LayerNorm + qk GEMM + attention + the fused body above, one C++ call;
  ``irmb_chain``: many of those in one call (``emo_kernels.IRMBChain``).

All return (B, C, H, W) tensors in ``torch.channels_last`` memory format, float32 or float64.
They have no autograd: ``can_run`` refuses calls where grad is required (training then
falls back to the ``torch`` backend under ``auto``), and BatchNorm in training mode.
"""
import torch

from . import _cpu

_ACT = {"none": 0, "silu": 1, "gelu": 2}
_DTYPES = (torch.float32, torch.float64)


def _common_reason(tensors):
    x = tensors[0]
    if x.device.type != "cpu":
        return f"the cpu backend runs CPU tensors only (got {x.device})"
    if x.dtype not in _DTYPES:
        return f"the cpu backend runs float32/float64 only (got {x.dtype})"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return ("the cpu backend is inference-only (no autograd) and an input requires grad; "
                "use torch.no_grad()/inference_mode(), or the torch backend for training")
    return _cpu.unavailable_reason()


def expand_dwconv_act_can_run(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1,
                              skip=False, bn_weight=None, bn_bias=None, running_mean=None,
                              running_var=None, bn_training=False, momentum=0.1, eps=1e-6):
    if bn_training:
        return "the cpu backend does not run BatchNorm in training mode (batch statistics)"
    if w_dw.shape[-1] not in (1, 3, 5, 7):
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {w_dw.shape[-1]})"
    return _common_reason([x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias])


def _fold_eval_bn(w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var, eps):
    scale = torch.rsqrt(running_var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    shift = -running_mean * scale
    if bn_bias is not None:
        shift = shift + bn_bias
    if b_dw is not None:
        shift = shift + b_dw * scale
    return w_dw * scale.reshape(-1, 1, 1, 1), shift


# Bytes of (zero-padded) v and z that one chunk of the fused block body may hold, per thread:
# well inside a core's L2 (2 MB on the machines measured), so that the expansion output is
# produced and consumed in cache and never written to DRAM. A chunk is several whole images or
# a band of output rows of one image.
CHUNK_BYTES_PER_THREAD = 3 << 19
# How a chunk's work is shared among threads: 0 = by rows unless the chunk has few pixels
# (then by channels), 1 = always by rows, 2 = always by channels. Tests set it.
SPLIT = 0


def _budget():
    return CHUNK_BYTES_PER_THREAD * torch.get_num_threads()


def expand_dwconv_act_cpu(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1, skip=False,
                          bn_weight=None, bn_bias=None, running_mean=None, running_var=None,
                          bn_training=False, momentum=0.1, eps=1e-6):
    if running_mean is not None:  # eval BatchNorm after the depthwise conv: fold it
        w_dw, b_dw = _fold_eval_bn(w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var, eps)
    return _cpu.load().expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, _ACT[act], stride, skip,
                                         _budget(), SPLIT)


def expand_dwconv_act_proj_cpu(x, w_exp, b_exp, w_dw, b_dw=None, *, w_proj, residual=None,
                               act="silu", stride=1, skip=False, bn_weight=None, bn_bias=None,
                               running_mean=None, running_var=None, bn_training=False,
                               momentum=0.1, eps=1e-6):
    """``residual + conv1x1(expand_dwconv_act(x, ...), w_proj)`` in one C++ call: chunk by
    chunk (CHUNK_BYTES_PER_THREAD), the expansion GEMM + bias + activation, the depthwise conv +
    SiLU (+ skip) and the projection GEMM (+ residual) run back to back, so v and z stay in
    cache: the call reads x (and the residual) and writes its output, nothing else."""
    if running_mean is not None:
        w_dw, b_dw = _fold_eval_bn(w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var, eps)
    return _cpu.load().expand_dwconv_act_proj(x, w_exp, b_exp, w_dw, b_dw, w_proj, residual,
                                              _ACT[act], stride, skip, _budget(), SPLIT)


def irmb_inference_can_run(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kw):
    if w_dw.shape[-1] not in (1, 3, 5, 7):
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {w_dw.shape[-1]})"
    return _common_reason([x, w_exp, b_exp, w_dw, b_dw, w_proj] +
                          [t for t in kw.values() if isinstance(t, torch.Tensor)])


def irmb_inference_cpu(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kw):
    """The whole block in one C++ call (LayerNorm, qk GEMM, attention, fused body, SE)."""
    return _cpu.load().irmb_inference(x, *_block_tuple((w_exp, b_exp, w_dw, b_dw, w_proj), kw),
                                      _budget(), SPLIT)


def _block_tuple(args, kw):
    """One block's arguments in the order of the C++ irmb_inference (after x)."""
    w_exp, b_exp, w_dw, b_dw, w_proj = args
    hd = kw.get("head_dim") or 0
    scale = kw.get("scale")
    if kw.get("w_qk") is not None and scale is None:
        scale = hd ** -0.5
    return (kw.get("ln_weight"), kw.get("ln_bias"), float(kw.get("eps", 1e-6)), kw.get("w_qk"),
            kw.get("b_qk"), hd, kw.get("window_size", 7), float(scale or 0.0), w_exp, b_exp,
            w_dw, b_dw, w_proj, _ACT[kw.get("act", "silu")], kw.get("stride", 1),
            bool(kw.get("skip", False)), kw.get("se_reduce_weight"), kw.get("se_reduce_bias"),
            kw.get("se_expand_weight"), kw.get("se_expand_bias"), _ACT[kw.get("se_act", "silu")])


def irmb_chain_can_run(x, chain, outputs):
    bad = chain.kernel_sizes - {1, 3, 5, 7}
    if bad:
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {sorted(bad)})"
    return _common_reason([x] + chain.tensors)


def _watch(tensors):
    """The tensors whose in-place changes a prepared chain must notice: all but inference
    tensors (they have no version counter; outside InferenceMode they cannot be modified in
    place; emo.InferencePlan holds such copies on purpose: a frozen plan)."""
    return [t for t in tensors if not t.is_inference()]


def _prepared_block(ext, args, kw):
    """One block's tuple for the C++ irmb_chain: its arguments, then its weights prepared once
    (the three 1x1 weights packed for the GEMM kernel, the depthwise weight as (k*k, Cmid))."""
    w_exp, _, w_dw, _, w_proj = args
    w_qk = kw.get("w_qk")
    with torch.no_grad():
        dw = w_dw.reshape(w_dw.shape[0], -1).t().contiguous()
        return _block_tuple(args, kw) + (
            None if w_qk is None else ext.pack_weight(w_qk),
            None if w_exp is None else ext.pack_weight(w_exp), dw, ext.pack_weight(w_proj))


def irmb_chain_cpu(x, chain, outputs):
    """The whole chain in one C++ call. The block tuples, with the weights packed for the GEMM
    kernel, are made at the first call and again when a weight was modified in place (version
    counters; see _watch)."""
    ext = _cpu.load()
    cached = chain.__dict__.get("_cpu_prepared")
    if cached is not None and [t._version for t in cached[0]] == cached[1]:
        tuples = cached[2]
    else:
        # versions read BEFORE packing: a write that lands while the packs are made (another
        # thread) leaves them stale for this call at most; the next call sees it and repacks
        watch = _watch(chain.tensors)
        versions = [t._version for t in watch]
        tuples = [_prepared_block(ext, a, k) for a, k in chain.blocks]
        chain._cpu_prepared = (watch, versions, tuples)
    return ext.irmb_chain(x, tuples, list(outputs), _budget(), SPLIT)


def window_attention_can_run(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    return _common_reason([q, k, v, k_pad])


def window_attention_cpu(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _cpu.load().window_attention(q, k, v, k_pad, head_dim, window_size, scale)

