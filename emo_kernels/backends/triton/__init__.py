"""The ``triton`` backend: Triton kernels for CUDA tensors, or for CPU tensors under the
Triton interpreter (``TRITON_INTERPRET=1``, a test tool: ``auto`` never picks it).

* ``expand_dwconv_act.py``: the custom op ``emo_kernels::expand_dwconv_act_triton`` (forward,
  backward, training BatchNorm), imported on first use so that a missing triton package only
  makes ``can_run`` give a reason, and so that TRITON_INTERPRET is read when the kernels are
  defined (after tests have set it);
* ``window_attention.py``: the custom op ``emo_kernels::window_attention_triton`` (EMO's
  strided windows and EMOv2's contiguous / hybrid forms, forward and backward);
* ``irmb_inference.py``: ``irmb_inference`` as two kernels per iRMB (v written once) plus the
  fused LayerNorm / qk / window-attention kernel of the attention blocks, and the runner of a
  whole ``IRMBChain`` (design D1 of gpu-design.md; inference only, no autograd).

GPU kernels (``gpu_kernel=True``): ``auto`` picks them on CUDA only where a committed GPU
measurement shows them faster (``emo_kernels.measured``).
"""
import os

from ... import dispatch

NAME = "triton"
KERNEL_SIZES = (3, 5)   # depthwise kernel sizes of expand_dwconv_act
dispatch.register_backend(NAME, priority=20)


def interpreted() -> bool:
    """Whether Triton runs in its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


try:
    from . import window_attention as _wa
    _ERROR = None
except ImportError as e:  # triton missing: the backend only reports why
    _wa, _ERROR = None, f"triton is not importable ({e})"


def _device_reason(x):
    if _ERROR is not None:
        return _ERROR
    if x.device.type == "cpu":
        if not interpreted():
            return ("tensors are on cpu; the Triton kernels need CUDA tensors (or "
                    "TRITON_INTERPRET=1, the interpreter, for tests)")
    elif x.device.type != "cuda":
        return f"Triton kernels need CUDA tensors, got a tensor on {x.device}"
    return None


def _auto_skip(x, *args, **kwargs):
    if x.device.type == "cpu" and interpreted():
        return "it runs only in the Triton interpreter here (TRITON_INTERPRET=1)"
    return None


def expand_dwconv_act_can_run(x, w_exp, b_exp, w_dw, b_dw=None, **kwargs):
    reason = _device_reason(x)
    if reason is None and w_dw.shape[-1] not in KERNEL_SIZES:
        reason = f"depthwise kernel size {w_dw.shape[-1]} is not supported (only {KERNEL_SIZES})"
    return reason


def expand_dwconv_act_triton(*args, **kwargs):
    from .expand_dwconv_act import expand_dwconv_act_triton as fn
    return fn(*args, **kwargs)


def window_attention_can_run(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                            v_pad=None, partition="remote"):
    return _device_reason(q) or _attention_reason(q.shape[1], v.shape[1], head_dim, window_size)


def _attention_reason(c, cv, head_dim, window_size):
    """Why the window attention kernels cannot take C query/key channels and Cv value
    channels in heads of head_dim, or None."""
    if head_dim > _wa.MAX_HEAD_DIM:
        return f"head_dim={head_dim} > {_wa.MAX_HEAD_DIM} (one head's channels stay on chip)"
    dv = cv // (c // head_dim)
    if dv > _wa.MAX_VALUE_DIM:
        return (f"value heads of {dv} channels > {_wa.MAX_VALUE_DIM} (one value head stays on "
                "chip)")
    if window_size * window_size > _wa.MAX_WINDOW_TOKENS:
        return (f"window_size={window_size}: {window_size ** 2} tokens > "
                f"{_wa.MAX_WINDOW_TOKENS} (a whole window stays on chip)")
    return None


def window_attention_triton(*args, **kwargs):
    return _wa.window_attention_triton(*args, **kwargs)


MAX_DW_KERNEL = 7      # depthwise kernel sizes of irmb_inference: 1..7 (k*k taps unrolled)


def irmb_inference_can_run(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, head_dim=None,
                           window_size=7, w_qk=None, partition="remote", attn_pre=True,
                           **kwargs):
    if partition != "remote" and attn_pre:
        return (f"attention before the expansion (attn_pre=True) runs EMO's strided windows "
                f"only in this backend's kernel, got partition={partition!r}")
    reason = _device_reason(x)
    if reason is not None:
        return reason
    if w_dw.shape[-1] > MAX_DW_KERNEL:
        return f"depthwise kernel size {w_dw.shape[-1]} > {MAX_DW_KERNEL}"
    if w_qk is not None:  # values: the expanded map when the attention comes after the expansion
        c = w_qk.shape[1]
        return _attention_reason(c, c if attn_pre else w_dw.shape[0], head_dim, window_size)
    return None


def irmb_inference_triton(*args, **kwargs):
    from .irmb_inference import irmb_inference_triton as fn
    return fn(*args, **kwargs)


def irmb_chain_can_run(x, chain, outputs):
    for i, (a, k) in enumerate(chain.blocks):  # x serves for the device only
        reason = irmb_inference_can_run(x, *a, **k)
        if reason is not None:
            return f"block {i}: {reason}"
    return None


def irmb_chain_triton(x, chain, outputs):
    from .irmb_inference import irmb_chain_triton as fn
    return fn(x, chain, outputs)


dispatch.register("expand_dwconv_act", NAME, expand_dwconv_act_triton, expand_dwconv_act_can_run,
                  gpu_kernel=True, auto_skip=_auto_skip)
dispatch.register("window_attention", NAME, window_attention_triton, window_attention_can_run,
                  gpu_kernel=True, auto_skip=_auto_skip)
dispatch.register("irmb_inference", NAME, irmb_inference_triton, irmb_inference_can_run,
                  gpu_kernel=True, auto_skip=_auto_skip, chain=irmb_chain_triton,
                  chain_can_run=irmb_chain_can_run)
