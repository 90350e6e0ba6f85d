"""Registers EMO-1M/2M/5M/6M and EMOv2-1M/2M/5M/20M (window 7, and window 8 ``_256``) with timm
(imported by ``emo/__init__.py`` when timm is installed): ``timm.create_model("emo_5m",
pretrained=..., fused=..., num_classes=...,
features_only=..., out_indices=..., feature_cls=..., drop_rate=..., drop_path_rate=...,
global_pool=...)``, built by timm's ``build_model_with_cfg`` with each variant's
``pretrained_cfg`` (emo.model.PRETRAINED_CFGS).

``pretrained=True`` loads through timm's loader (``url`` through torch.hub's cache, ``file``,
``hf_hub_id``, or ``state_dict`` of the cfg; override with ``pretrained_cfg_overlay``); the
checkpoint may be wrapped or 'module.'-prefixed (emo.checkpoint.unwrap_state_dict). The
official weights' URL is in PRETRAINED_CFGS (see emo/model.py).
``features_only=True`` gives timm's feature wrapper (``feature_cls="getter"`` by default:
``forward_intermediates`` on the model pruned of its norm and head; "list"/"dict"/"hook"
also work).
"""
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import unwrap_state_dict
from .emo2 import EMO2
from .model import EMO, PRETRAINED_CFGS, model_class, model_config


def _filter_state_dict(state_dict, model):
    return unwrap_state_dict(state_dict)


def _create(variant, pretrained=False, **kwargs):
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    feature_cls = kwargs.pop("feature_cls", "getter")
    cfg = model_config(variant)
    if kwargs.get("drop_path_rate") is None:
        kwargs.pop("drop_path_rate", None)
    cfg.update(kwargs)
    return build_model_with_cfg(
        model_class(variant), variant, pretrained, pretrained_filter_fn=_filter_state_dict,
        feature_cfg=dict(out_indices=out_indices, feature_cls=feature_cls), **cfg)


default_cfgs = generate_default_cfgs({f"{name}.in1k": dict(cfg)
                                      for name, cfg in PRETRAINED_CFGS.items()})


@register_model
def emo_1m(pretrained=False, **kwargs) -> EMO:
    return _create("emo_1m", pretrained, **kwargs)


@register_model
def emo_2m(pretrained=False, **kwargs) -> EMO:
    return _create("emo_2m", pretrained, **kwargs)


@register_model
def emo_5m(pretrained=False, **kwargs) -> EMO:
    return _create("emo_5m", pretrained, **kwargs)


@register_model
def emo_6m(pretrained=False, **kwargs) -> EMO:
    return _create("emo_6m", pretrained, **kwargs)


@register_model
def emo2_1m(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_1m", pretrained, **kwargs)


@register_model
def emo2_2m(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_2m", pretrained, **kwargs)


@register_model
def emo2_5m(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_5m", pretrained, **kwargs)


@register_model
def emo2_20m(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_20m", pretrained, **kwargs)


@register_model
def emo2_1m_256(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_1m_256", pretrained, **kwargs)


@register_model
def emo2_2m_256(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_2m_256", pretrained, **kwargs)


@register_model
def emo2_5m_256(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_5m_256", pretrained, **kwargs)


@register_model
def emo2_20m_256(pretrained=False, **kwargs) -> EMO2:
    return _create("emo2_20m_256", pretrained, **kwargs)
