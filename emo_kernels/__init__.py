"""emo_kernels: fused kernels for EMO's iRMB hot path.

Public ops (each with a pure-PyTorch reference in ``emo_kernels.reference``):
    expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, *, act, stride, skip, bn_...)
    window_attention(q, k, v, k_pad, *, head_dim, window_size=7)
    irmb_inference(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act, stride, skip, ln_..., w_qk, ...)
    IRMBChain(blocks, in_channels, dtype, device)(x, outputs)   irmb_inference over many blocks
Backend control: set_backend, use_backend, get_backend, explain, $EMO_KERNELS_BACKEND.
"""
from ._version import __version__
from .backends import (BACKENDS, BackendUnavailableError, explain, get_backend, set_backend,
                       use_backend)
from .ops import IRMBChain, expand_dwconv_act, irmb_inference, window_attention

__all__ = ["expand_dwconv_act", "window_attention", "irmb_inference", "IRMBChain", "set_backend",
           "use_backend", "get_backend", "explain", "BACKENDS", "BackendUnavailableError",
           "__version__"]
