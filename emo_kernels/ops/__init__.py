from .expand_dwconv_act import expand_dwconv_act
from .window_attention import window_attention

__all__ = ["expand_dwconv_act", "window_attention"]
