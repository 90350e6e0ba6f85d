"""EMO model zoo (EMO v1 and EMOv2): ``emo.emo_5m(fused=True)``, ``emo.emo2_5m()``,
``emo.create_model(name, ...)``,
``emo.prepare_inference(model)`` (a frozen inference plan), ``emo.convert_sync_batchnorm(model)``
(SyncBatchNorm on any device)."""
from .checkpoint import load_checkpoint, unwrap_state_dict
from .inference import GraphedPlan, InferencePlan, prepare_inference
from .layers import SyncBatchNorm, convert_sync_batchnorm
from .model import (EMO, CONFIGS, CONFIGS_V2, PRETRAINED_CFGS, create_model, emo2_1m, emo2_1m_256,
                    emo2_2m, emo2_2m_256, emo2_5m, emo2_5m_256, emo2_20m, emo2_20m_256, emo_1m,
                    emo_2m, emo_5m, emo_6m, iRMB, list_models)
from .emo2 import EMO2, iiRMB

try:  # timm is optional: with it, every variant is a timm model too (emo/_timm.py)
    import timm  # noqa: F401
except ImportError as e:
    if e.name != "timm":  # timm is there but broken: say so
        raise
else:
    from . import _timm  # noqa: F401  (registers the variants; its own errors are not hidden)

__all__ = ["EMO", "iRMB", "EMO2", "iiRMB", "CONFIGS", "CONFIGS_V2", "PRETRAINED_CFGS",
           "create_model", "list_models", "load_checkpoint", "unwrap_state_dict", "InferencePlan", "GraphedPlan",
           "prepare_inference", "SyncBatchNorm", "convert_sync_batchnorm",
           "emo_1m", "emo_2m", "emo_5m", "emo_6m", "emo2_1m", "emo2_2m", "emo2_5m", "emo2_20m",
           "emo2_1m_256", "emo2_2m_256", "emo2_5m_256", "emo2_20m_256"]
