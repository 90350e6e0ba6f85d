"""The public ops: argument validation, then the dispatcher picks a backend."""
from .expand_dwconv_act import expand_dwconv_act
from .irmb_inference import irmb_inference
from .window_attention import window_attention

__all__ = ["expand_dwconv_act", "window_attention", "irmb_inference"]
