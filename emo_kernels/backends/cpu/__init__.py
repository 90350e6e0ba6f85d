"""The ``cpu`` backend: C++ kernels (csrc/cpu/) for CPU tensors, inference only.

The kernels are torch.library ops, ``torch.ops.emo_kernels_cpu_<isa>.<op>`` of the ISA variant
loaded for this CPU (emo_kernels/_ext.py); their fake functions are registered below, so
torch.compile(fullgraph=True) traces calls of them and runs the C++ kernels.

* ``expand_dwconv_act`` (inside ``irmb_inference`` with the projection): the work is cut into
  chunks that fit the threads' L2 (several whole images, or a band of output rows of one image with its halo
  rows recomputed); per chunk, phase 1 runs the expansion GEMM with bias + activation applied
  on its accumulators and written straight into a zero-padded buffer, phase 2 the depthwise
  conv + bias + SiLU (+ skip) and the projection GEMM (+ residual, again in its epilogue), each
  phase split over all threads by rows (or by channels when the chunk has few pixels). v and z
  never leave cache. The GEMMs are the extension's own kernel (csrc/cpu/gemm.h) on weights
  packed into column panels: per call, or once per chain (``irmb_chain``). An eval-mode
  BatchNorm passed as arguments is folded into the depthwise weights here.
* ``window_attention``: reads q, k, v through their strides (channel slices of an NHWC qk
  tensor need no copy), one task per (image, window, head), scores and P.V in blocks of 4
  queries. EMOv2's forms too: the contiguous partition, the hybrid one (a second pass over
  the contiguous windows adds into the output), wide value heads, padded values ``v_pad``.
* ``irmb_inference``: LayerNorm + qk GEMM + attention + the fused body above, one C++ call
  (EMOv2's hybrid block, ``attn_pre=False``: qk and expansion GEMMs, the hybrid attention over
  v, the body without its expansion);
  ``irmb_chain``: many of those in one call (the chain runner of ``emo_kernels.plan.IRMBChain``).

All return (B, C, H, W) tensors in ``torch.channels_last`` memory format, float32 or float64.
They have no autograd: ``can_run`` refuses calls where grad is required (training then
falls back to the ``torch`` backend under ``auto``), and BatchNorm in training mode.
"""
import torch

from ... import _ext, dispatch
from ...formulas import ACT_CODES as _ACT
from ...formulas import bn_scale_shift, dw_out_size, fold_affine
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
    return unavailable_reason()


def expand_dwconv_act_can_run(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1,
                              skip=False, bn_weight=None, bn_bias=None, running_mean=None,
                              running_var=None, bn_training=False, momentum=0.1, eps=1e-6,
                              bn_process_group=None):
    if bn_training:
        return "the cpu backend does not run BatchNorm in training mode (batch statistics)"
    if w_dw.shape[-1] not in (1, 3, 5, 7):
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {w_dw.shape[-1]})"
    return _common_reason([x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias])


def _fold_eval_bn(w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var, eps):
    return fold_affine(w_dw, b_dw, *bn_scale_shift(bn_weight, bn_bias, running_mean,
                                                   running_var, eps))


# Bytes of (zero-padded) v and z that one chunk of the fused block body may hold, per thread
# (the C++ multiplies by the number of threads at call time, so traced code bakes in no count):
# well inside a core's L2 (2 MB on the machines measured), so that the expansion output is
# produced and consumed in cache and never written to DRAM. A chunk is several whole images or
# a band of output rows of one image.
CHUNK_BYTES_PER_THREAD = 3 << 19
# How a chunk's work is shared among threads: 0 = by rows unless the chunk has few pixels
# (then by channels), 1 = always by rows, 2 = always by channels. Tests set it.
SPLIT = 0


def expand_dwconv_act_cpu(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1, skip=False,
                          bn_weight=None, bn_bias=None, running_mean=None, running_var=None,
                          bn_training=False, momentum=0.1, eps=1e-6):
    if running_mean is not None:  # eval BatchNorm after the depthwise conv: fold it
        w_dw, b_dw = _fold_eval_bn(w_dw, b_dw, bn_weight, bn_bias, running_mean, running_var, eps)
    return _ops().expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, _ACT[act], stride, skip,
                                    CHUNK_BYTES_PER_THREAD, SPLIT)


def irmb_inference_can_run(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kw):
    if w_dw.shape[-1] not in (1, 3, 5, 7):
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {w_dw.shape[-1]})"
    return _common_reason([x, w_exp, b_exp, w_dw, b_dw, w_proj] +
                          [t for t in kw.values() if isinstance(t, torch.Tensor)])


def irmb_inference_cpu(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kw):
    """The whole block in one C++ call (LayerNorm, qk GEMM, attention, fused body, SE)."""
    tensors, ints, floats = _block_lists((w_exp, b_exp, w_dw, b_dw, w_proj), kw)
    return _ops().irmb_inference(x, tensors, ints, floats, CHUNK_BYTES_PER_THREAD, SPLIT)


def _block_lists(args, kw, prepared=(None, None, None, None)):
    """One block's arguments as the three lists of the C++ ``BlockArgs`` (csrc/cpu/
    irmb_inference.cpp; ``unpack_block`` there reads them), the one place that lays them out:

    * tensors (17, each may be None): ln_weight, ln_bias, w_qk, b_qk, w_exp, b_exp, w_dw, b_dw,
      w_proj, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, then the
      ``prepared`` weights: w_qk packed, w_exp packed, w_dw as (k*k, Cmid), w_proj packed;
    * ints (8): head_dim, window_size, act, stride, skip, se_act, partition (PARTITION_CODES),
      attn_pre;
    * floats (2): eps, scale.

    irmb_chain takes the blocks' lists concatenated."""
    w_exp, b_exp, w_dw, b_dw, w_proj = args
    hd = kw.get("head_dim") or 0
    scale = kw.get("scale")
    if kw.get("w_qk") is not None and scale is None:
        scale = hd ** -0.5
    tensors = [kw.get("ln_weight"), kw.get("ln_bias"), kw.get("w_qk"), kw.get("b_qk"), w_exp,
               b_exp, w_dw, b_dw, w_proj, kw.get("se_reduce_weight"), kw.get("se_reduce_bias"),
               kw.get("se_expand_weight"), kw.get("se_expand_bias"), *prepared]
    ints = [hd, kw.get("window_size", 7), _ACT[kw.get("act", "silu")], kw.get("stride", 1),
            int(bool(kw.get("skip", False))), _ACT[kw.get("se_act", "silu")],
            PARTITION_CODES[kw.get("partition", "remote")], int(kw.get("attn_pre", True))]
    assert len(tensors) == _N_TENSORS and len(ints) == _N_INTS
    return tensors, ints, [float(kw.get("eps", 1e-6)), float(scale or 0.0)]


_N_TENSORS, _N_INTS = 17, 8  # per block in the lists: kTensors, kInts of the C++


def irmb_chain_can_run(x, chain, outputs):
    bad = chain.kernel_sizes - {1, 3, 5, 7}
    if bad:
        return f"the cpu backend supports depthwise kernels 1, 3, 5, 7 (got {sorted(bad)})"
    return _common_reason([x] + chain.tensors)


def _prepared_block(ops, args, kw):
    """One block's lists (_block_lists) for irmb_chain, with its weights prepared once (the
    three 1x1 weights packed for the GEMM kernel, the depthwise weight as (k*k, Cmid))."""
    w_exp, _, w_dw, _, w_proj = args
    w_qk = kw.get("w_qk")
    with torch.no_grad():
        dw = w_dw.reshape(w_dw.shape[0], -1).t().contiguous()
        prepared = (None if w_qk is None else ops.pack_weight(w_qk),
                    None if w_exp is None else ops.pack_weight(w_exp), dw,
                    ops.pack_weight(w_proj))
    return _block_lists(args, kw, prepared)


def _chain_lists(ops, chain):
    lists = ([], [], [])
    for a, k in chain.blocks:
        for whole, part in zip(lists, _prepared_block(ops, a, k)):
            whole.extend(part)
    return lists


def irmb_chain_cpu(x, chain, outputs):
    """The whole chain in one C++ call. The blocks' lists, with the weights packed for the GEMM
    kernel, are made at the first call and again when a weight was modified in place
    (``IRMBChain.prepared``)."""
    ops = _ops()
    lists = chain.prepared(("cpu", ops), lambda ch: _chain_lists(ops, ch))
    return ops.irmb_chain(x, *lists, list(outputs), CHUNK_BYTES_PER_THREAD, SPLIT)


PARTITION_CODES = {"remote": 0, "close": 1, "hybrid": 2}  # csrc/cpu/window_attention.cpp


def window_attention_can_run(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                            v_pad=None, partition="remote"):
    return _common_reason([q, k, v, k_pad, v_pad])


def window_attention_cpu(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None, v_pad=None,
                         partition="remote"):
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _ops().window_attention(q, k, v, k_pad, head_dim, window_size, scale, v_pad,
                                   PARTITION_CODES[partition])


# ---- loading, and the fake (meta) functions of the ops --------------------------------------
_OPS = None  # torch.ops.<namespace> of the loaded variant: read by traced code, set once


@torch.compiler.assume_constant_result
def unavailable_reason():
    """None if the extension loads here (it is loaded now, with its fake functions), else why
    not. A constant for torch.compile: run for real at trace time, so a first call inside a
    traced function loads the extension instead of breaking the graph."""
    try:
        _ops()
    except ImportError as e:
        return str(e)
    return None


def _ops():
    """The ops of the CPU variant for this machine (emo_kernels._ext.cpu_ops); ImportError
    says why they cannot be used."""
    global _OPS
    if _OPS is None:
        _OPS = _ext.cpu_ops()
    return _OPS


def _nhwc(like, b, c, h, w):
    """An empty (B, C, H, W) tensor in channels_last memory format, like the kernels' outputs."""
    return like.new_empty((b, h, w, c)).permute(0, 3, 1, 2)


def _dw_out(h, w, k, stride):
    return dw_out_size(h, k, stride), dw_out_size(w, k, stride)


def _block_out(x_shape, tensors, ints, i):
    """(B, Cout, Ho, Wo) of block i of the lists (_block_lists' layout) on an input x_shape."""
    t, n = tensors[_N_TENSORS * i:_N_TENSORS * (i + 1)], ints[_N_INTS * i:_N_INTS * (i + 1)]
    ho, wo = _dw_out(x_shape[2], x_shape[3], t[6].shape[-1], n[3])
    return (x_shape[0], t[8].shape[0], ho, wo)


def register_fakes(ns):
    """Register the fake functions of the ops of namespace ``ns`` (emo_kernels._ext calls it
    once per variant, when it loads one)."""
    ops = getattr(torch.ops, ns)
    # the GEMM panel width of this variant, per dtype: from one real (tiny) pack
    widths = {dt: ops.pack_weight(torch.zeros(1, 1, dtype=dt)).shape[2] for dt in _DTYPES}
    lib = ns + "::"

    @torch.library.register_fake(lib + "expand_dwconv_act")
    def _(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, chunk_bytes, split):
        ho, wo = _dw_out(x.shape[2], x.shape[3], w_dw.shape[-1], stride)
        return _nhwc(x, x.shape[0], x.shape[1] if w_exp is None else w_exp.shape[0], ho, wo)

    @torch.library.register_fake(lib + "window_attention")
    def _(q, k, v, k_pad, head_dim, window_size, scale, v_pad=None, partition=0):
        return _nhwc(q, q.shape[0], v.shape[1], q.shape[2], q.shape[3])

    @torch.library.register_fake(lib + "irmb_inference")
    def _(x, tensors, ints, floats, chunk_bytes, split):
        return _nhwc(x, *_block_out(x.shape, tensors, ints, 0))

    @torch.library.register_fake(lib + "irmb_chain")
    def _(x, tensors, ints, floats, outputs, chunk_bytes, split):
        shape, outs = tuple(x.shape), []
        for i in range(len(tensors) // _N_TENSORS):
            shape = _block_out(shape, tensors, ints, i)
            if i in outputs:
                outs.append(_nhwc(x, *shape))
        return outs

    @torch.library.register_fake(lib + "pack_weight")
    def _(w):
        n = w.shape[0]
        k, npw = w.numel() // max(n, 1), widths[w.dtype]
        return w.new_empty(((n + npw - 1) // npw, k, npw))

    @torch.library.register_fake(lib + "linear")
    def _(x, w, packed, bias, act):
        return x.new_empty((x.shape[0], w.shape[0]))


# ---- registration with the dispatcher -------------------------------------------------------
NAME = "cpu"
dispatch.register_backend(NAME, priority=30)
dispatch.register("expand_dwconv_act", NAME, expand_dwconv_act_cpu, expand_dwconv_act_can_run)
dispatch.register("window_attention", NAME, window_attention_cpu, window_attention_can_run)
dispatch.register("irmb_inference", NAME, irmb_inference_cpu, irmb_inference_can_run,
                  chain=irmb_chain_cpu, chain_can_run=irmb_chain_can_run)
