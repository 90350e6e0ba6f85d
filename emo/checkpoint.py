"""Loading official EMO checkpoints (plain state dicts, possibly wrapped or 'module.'-prefixed)."""
import os

import torch

WRAPPER_KEYS = ("state_dict", "model", "net")


def unwrap_state_dict(obj):
    """Return the plain state dict inside ``obj`` (wrapped under state_dict/model/net, or not)."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError("checkpoint holds no state dict (expected a dict of tensors, possibly "
                         f"under one of {WRAPPER_KEYS})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model, checkpoint, strict=True):
    """Load ``checkpoint`` (a path or a dict) into ``model``; returns the model.

    A classifier head of another size than the model's (fine-tuning with ``num_classes``)
    is left out and keeps its fresh initialisation; every other key must match.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = unwrap_state_dict(checkpoint)
    own = model.state_dict()
    head_keys = [k for k in sd if k.startswith("head.")]
    if head_keys and any(k not in own or own[k].shape != sd[k].shape for k in head_keys):
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        own = {k: v for k, v in own.items() if not k.startswith("head.")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(f"checkpoint does not match {type(model).__name__}: missing keys "
                       f"{missing or 'none'}; unexpected keys {unexpected or 'none'}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
           for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError("checkpoint shapes do not match the model: " + "; ".join(bad))
    model.load_state_dict(sd, strict=False)
    return model
