"""EMO model zoo: ``emo.emo_5m(fused=True)``, ``emo.create_model(name, ...)``."""
from .checkpoint import load_checkpoint, unwrap_state_dict
from .model import EMO, CONFIGS, create_model, emo_1m, emo_2m, emo_5m, emo_6m, iRMB, list_models

__all__ = ["EMO", "iRMB", "CONFIGS", "create_model", "list_models", "load_checkpoint",
           "unwrap_state_dict", "emo_1m", "emo_2m", "emo_5m", "emo_6m"]
