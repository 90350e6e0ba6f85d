"""EMO model zoo: ``emo.emo_5m(fused=True)``, ``emo.create_model(name, ...)``,
``emo.prepare_inference(model)`` (a frozen inference plan), ``emo.convert_sync_batchnorm(model)``
(SyncBatchNorm on any device)."""
from .checkpoint import load_checkpoint, unwrap_state_dict
from .inference import GraphedPlan, InferencePlan, prepare_inference
from .layers import SyncBatchNorm, convert_sync_batchnorm
from .model import (EMO, CONFIGS, PRETRAINED_CFGS, create_model, emo_1m, emo_2m, emo_5m, emo_6m,
                    iRMB, list_models)

try:  # timm is optional: with it, emo_1m/2m/5m/6m are timm models too (emo/_timm.py)
    import timm  # noqa: F401
except ImportError as e:
    if e.name != "timm":  # timm is there but broken: say so
        raise
else:
    from . import _timm  # noqa: F401  (registers the variants; its own errors are not hidden)

__all__ = ["EMO", "iRMB", "CONFIGS", "PRETRAINED_CFGS", "create_model", "list_models",
           "load_checkpoint", "unwrap_state_dict", "InferencePlan", "GraphedPlan",
           "prepare_inference", "SyncBatchNorm", "convert_sync_batchnorm",
           "emo_1m", "emo_2m", "emo_5m", "emo_6m"]
