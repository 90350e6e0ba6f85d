"""The ``torch`` backend: the pure-PyTorch references of ``emo_kernels.reference`` (any
device, autograd). ``irmb_inference`` is the composition of the public ops ``window_attention``
and ``expand_dwconv_act``, each dispatched to its own backend."""
import sys

from ... import dispatch
from ...reference import expand_dwconv_act_ref, irmb_inference_ref, window_attention_ref

NAME = "torch"
dispatch.register_backend(NAME, priority=40)


def irmb_inference_composed(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs):
    return irmb_inference_ref(x, w_exp, b_exp, w_dw, b_dw, w_proj, ops=sys.modules["emo_kernels"],
                              **kwargs)


dispatch.register("expand_dwconv_act", NAME, expand_dwconv_act_ref)
dispatch.register("window_attention", NAME, window_attention_ref)
dispatch.register("irmb_inference", NAME, irmb_inference_composed)
