"""emo_kernels: fused kernels for EMO's iRMB hot path.

Public ops (``emo_kernels.ops``; each with a pure-PyTorch reference in ``emo_kernels.reference``):
    expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, *, act, stride, skip, bn_...)
    window_attention(q, k, v, k_pad, *, head_dim, window_size=7, scale, v_pad, partition)
    irmb_inference(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act, stride, skip, ln_..., w_qk, ...)
A prepared plan (``emo_kernels.plan``):
    IRMBChain(blocks, in_channels, dtype, device)(x, outputs)   irmb_inference over many blocks
Backends: ``emo_kernels/backends/<name>/`` (cuda, triton, cpu, torch); backend control
(``emo_kernels.dispatch``): set_backend, use_backend, get_backend, explain, which,
$EMO_KERNELS_BACKEND.
"""
from . import backends, dispatch  # noqa: F401  (importing backends registers them)
from ._version import __version__
from .dispatch import (BackendUnavailableError, explain, get_backend, record_dispatch,
                       set_backend, use_backend, which)
from .ops import expand_dwconv_act, irmb_inference, window_attention
from .plan import IRMBChain

BACKENDS = dispatch.backends()

__all__ = ["expand_dwconv_act", "window_attention", "irmb_inference", "IRMBChain", "set_backend",
           "use_backend", "get_backend", "explain", "which", "record_dispatch", "BACKENDS",
           "BackendUnavailableError", "__version__"]
