"""The ``cpu`` backend: the C++ kernels of csrc/cpu/ (``emo_kernels.cpu``) for CPU tensors,
inference only. ``irmb_inference`` also runs a whole prepared chain of blocks in one call
(``emo_kernels.plan.IRMBChain``)."""
from ... import cpu as _k
from ... import dispatch

NAME = "cpu"
dispatch.register_backend(NAME, priority=30)
dispatch.register("expand_dwconv_act", NAME, _k.expand_dwconv_act_cpu,
                  _k.expand_dwconv_act_can_run)
dispatch.register("window_attention", NAME, _k.window_attention_cpu, _k.window_attention_can_run)
dispatch.register("irmb_inference", NAME, _k.irmb_inference_cpu, _k.irmb_inference_can_run,
                  chain=_k.irmb_chain_cpu, chain_can_run=_k.irmb_chain_can_run)
