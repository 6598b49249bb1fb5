"""timm image backbones returning pooled features, with local (offline) pretrained weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch

from lib.errors import DataError
from lib.models.weights import TIMM_LITE0_NAME, check_state_dict_matches, convert_lukemelas_lite0

DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def _check_name(name: str) -> None:
    """Raise DataError unless timm knows the architecture name."""
    if not timm.is_model(name):
        raise DataError(f"unknown backbone '{name}' (timm has no such model)")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint (.pth/.pt/.bin/.safetensors, plain or wrapped in 'state_dict'/'model') as a state dict."""
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        state_dict = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as exc:  # torch / pickle / safetensors raise many different types
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise DataError(f"{path}: cannot read weights ({type(exc).__name__}: {reason})") from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise DataError(f"{path}: not a state dict of tensors")
    return state_dict


def _drop_absent_classifier(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the checkpoint's classifier tensors when the model was built without a classifier."""
    classifier = model.pretrained_cfg.get("classifier") or ""
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    own = model.state_dict()
    return {
        k: v for k, v in state_dict.items()
        if k in own or not any(n and (k == n or k.startswith(n + ".")) for n in names)
    }


def load_backbone_weights(model: torch.nn.Module, name: str, path: str | Path) -> None:
    """Load a local checkpoint into a timm model strictly; DataError lists mismatched keys."""
    path = Path(path)
    state_dict = _read_weights(path)
    if name == TIMM_LITE0_NAME and "_conv_stem.weight" in state_dict:
        state_dict = convert_lukemelas_lite0(state_dict)
    state_dict = _drop_absent_classifier(model, state_dict)
    check_state_dict_matches(model, state_dict, f"{path} for backbone '{name}'")
    model.load_state_dict(state_dict, strict=True)


def create_backbone(
    name: str, pretrained: bool = False, weights: str | Path | None = None, **timm_kwargs: Any
) -> torch.nn.Module:
    """timm model with num_classes=0 (pooled features, dim = .num_features); weights=FILE loads a local checkpoint."""
    _check_name(name)
    timm_kwargs.setdefault("num_classes", 0)
    use_hub = pretrained and weights is None
    model = timm.create_model(name, pretrained=use_hub, **timm_kwargs)
    if weights is not None:
        load_backbone_weights(model, name, weights)
    return model


def resolve_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """Input size, mean, std, interpolation (and crop) the model expects, from timm's data config."""
    config = timm.data.resolve_model_data_config(model)
    return {k: config[k] for k in DATA_CONFIG_KEYS if k in config}
