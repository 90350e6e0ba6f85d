"""EMO model zoo: ``emo.emo_5m(fused=True)``, ``emo.create_model(name, ...)``,
``emo.prepare_inference(model)`` (a frozen inference plan)."""
from .checkpoint import load_checkpoint, unwrap_state_dict
from .inference import InferencePlan, prepare_inference
from .model import EMO, CONFIGS, create_model, emo_1m, emo_2m, emo_5m, emo_6m, iRMB, list_models

__all__ = ["EMO", "iRMB", "CONFIGS", "create_model", "list_models", "load_checkpoint",
           "unwrap_state_dict", "InferencePlan", "prepare_inference", "emo_1m", "emo_2m",
           "emo_5m", "emo_6m"]
