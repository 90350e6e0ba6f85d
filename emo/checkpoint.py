"""Loading official EMO checkpoints (plain state dicts, possibly wrapped or 'module.'-prefixed).

Files are read with ``torch.load(weights_only=True)``: a file holding other Python objects is
refused, never executed. Every problem raises an error naming the file and what is wrong.
"""
import os
import pickle
import warnings

import torch

WRAPPER_KEYS = ("state_dict", "model", "net")
HEAD_MODES = ("warn", "drop", "strict")


def _source_name(checkpoint):
    if isinstance(checkpoint, (str, os.PathLike)):
        return repr(os.fspath(checkpoint))
    if hasattr(checkpoint, "read"):
        name = getattr(checkpoint, "name", None)
        return repr(name) if isinstance(name, str) else f"<{type(checkpoint).__name__}>"
    return f"<{type(checkpoint).__name__}>"


def _read(checkpoint, src):
    """torch.load with weights_only=True, its failures turned into errors about the file."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except EOFError:
        raise ValueError(f"cannot load checkpoint {src}: it is empty") from None
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln]
        if lines:
            raise ValueError(
                f"refused to load checkpoint {src}: it holds Python objects other than tensors "
                f"and plain containers ({lines[0]}); loading it would run code from the file, "
                "so it is not loaded. Save the state dict alone (model.state_dict())") from None
        raise ValueError(f"cannot load checkpoint {src}: it is not a PyTorch checkpoint "
                         "(corrupt, truncated or another format)") from None
    except RuntimeError as e:  # the zip reader: truncated or damaged archive
        raise ValueError(f"cannot load checkpoint {src}: it is corrupt or truncated "
                         f"({str(e).splitlines()[0][:200]})") from None


def unwrap_state_dict(obj, src="the checkpoint"):
    """Return the plain state dict inside ``obj`` (wrapped under state_dict/model/net, or not)."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{src} holds no state dict (expected a non-empty dict of tensors, "
                         f"possibly under one of {WRAPPER_KEYS}), got {type(obj).__name__}")
    bad = [(k, v) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        k, v = bad[0]
        raise ValueError(f"{src} is not a state dict of tensors: key {k!r} holds a "
                         f"{type(v).__name__}" + (f" (and {len(bad) - 1} more keys)"
                                                  if len(bad) > 1 else ""))
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model, checkpoint, strict=True, head="warn"):
    """Load ``checkpoint`` (a path, a file-like object or a state dict) into ``model``; returns
    the model.

    ``head``: what to do when the checkpoint's classifier (``head.*``) has another shape than
    the model's (another ``num_classes``): ``"strict"`` raises, ``"drop"`` loads the backbone
    only (the model's head keeps its fresh initialisation: fine-tuning), ``"warn"`` (default)
    does the same with a warning naming the head keys. A model without a head
    (``features_only``) always loads the backbone only.
    """
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    src = _source_name(checkpoint)
    if isinstance(checkpoint, (str, os.PathLike)) or hasattr(checkpoint, "read"):
        checkpoint = _read(checkpoint, src)
    sd = unwrap_state_dict(checkpoint, f"checkpoint {src}")
    own = model.state_dict()
    head_keys = sorted(k for k in sd if k.startswith("head."))
    own_head = sorted(k for k in own if k.startswith("head."))
    mismatch = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model "
                f"{tuple(own[k].shape) if k in own else 'absent'}"
                for k in head_keys if k not in own or own[k].shape != sd[k].shape]
    if mismatch:
        if own_head and head == "strict":
            raise ValueError(f"checkpoint {src}: the classifier head does not match the model "
                             f"({'; '.join(mismatch)}); pass head='drop' to load the backbone "
                             "only")
        if own_head and head == "warn":
            warnings.warn(f"checkpoint {src}: the classifier head does not match the model "
                          f"({'; '.join(mismatch)}); loading the backbone only, the head keys "
                          f"{own_head} keep their fresh initialisation (pass head='drop' to "
                          "silence this, head='strict' to refuse)", stacklevel=2)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        own = {k: v for k, v in own.items() if not k.startswith("head.")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(f"checkpoint {src} does not match {type(model).__name__}: missing keys "
                       f"{missing or 'none'}; unexpected keys {unexpected or 'none'}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
           for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"checkpoint {src}: shapes do not match the model: " + "; ".join(bad))
    model.load_state_dict(sd, strict=False)
    return model
