"""Which emo_kernels backends can run what a benchmark asks of them: one op call
(:func:`backend_reasons`), every op call of a fused model (:func:`model_backend_reasons`), and
what ``auto`` picks over a model (:func:`model_auto_backends`), all from ``emo_kernels.explain``.
"""
from typing import Dict, List, Optional

import torch

import emo_kernels
from bench.shapes import DwSpec, attn_inputs, block_specs, dw_inputs
from emo_kernels.backends.triton import interpreted as triton_interpreted


def backend_reasons(op, args, kwargs) -> Dict[str, Optional[str]]:
    """{backend: None if it can run this call, else why not}, from ``emo_kernels.explain``.

    Differences from explain: an implementation that ``auto`` skips only because it is not yet
    verified on hardware counts as runnable (a benchmark asks for it by name); the Triton
    interpreter (TRITON_INTERPRET=1 on CPU tensors) is refused: it is a test tool,
    thousands of times slower than the reference."""
    reasons = emo_kernels.explain(op, *args, **kwargs)
    out = {}
    dev = next(a for a in args if isinstance(a, torch.Tensor)).device
    for b, r in reasons.items():
        if r is not None and r.startswith("usable when asked for explicitly"):
            r = None
        if r is None and b == "triton" and dev.type != "cuda" and triton_interpreted():
            r = "Triton interpreter (TRITON_INTERPRET=1): a test tool, not benchmarked"
        out[b] = r
    return out


def model_backend_reasons(model_name, device, dtype, layout, size, train) -> Dict[str, Optional[str]]:
    """Per backend: None if it can run every op call of the fused model, else the first reason."""
    out = {b: None for b in emo_kernels.BACKENDS}
    for _, spec in block_specs(model_name, size):
        if isinstance(spec, DwSpec):
            op, (args, kw, _) = "expand_dwconv_act", dw_inputs(spec, 1, device, dtype, layout, train)
        else:
            op, (args, kw, _) = "window_attention", attn_inputs(spec, 1, device, dtype, layout, train)
        for b, r in backend_reasons(op, args, kw).items():
            if r is not None and out[b] is None:
                out[b] = f"{op} {spec.id}: {r}"
    return out


def model_auto_backends(model_name, device, dtype, layout, size, train) -> List[str]:
    """The backends 'auto' picks over the model's op calls (explain's order: the first that
    can run each call, never an implementation auto skips, nor the Triton interpreter)."""
    picks = set()
    for _, spec in block_specs(model_name, size):
        if isinstance(spec, DwSpec):
            op, (args, kw, _) = "expand_dwconv_act", dw_inputs(spec, 1, device, dtype, layout, train)
        else:
            op, (args, kw, _) = "window_attention", attn_inputs(spec, 1, device, dtype, layout, train)
        reasons = emo_kernels.explain(op, *args, **kw)
        if torch.device(device).type != "cuda" and triton_interpreted():
            reasons["triton"] = "interpreter"
        picks.add(next((b for b in emo_kernels.BACKENDS if reasons[b] is None), "none"))
    return [b for b in emo_kernels.BACKENDS + ("none",) if b in picks]
