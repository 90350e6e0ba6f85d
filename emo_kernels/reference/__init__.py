"""Pure-PyTorch references of every op: the CPU fallback and the oracle of every kernel test."""
from .expand_dwconv_act import expand_dwconv_act_ref, activation, dw_padding
from .irmb_inference import irmb_inference_ref
from .window_attention import (close_partition, close_unpartition, window_attention_ref,
                               window_partition, window_unpartition)

__all__ = ["expand_dwconv_act_ref", "window_attention_ref", "irmb_inference_ref", "activation", "dw_padding",
           "window_partition", "window_unpartition", "close_partition", "close_unpartition"]
