"""timm image backbones returning pooled features: local (offline) weights, their identity, the data config."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import timm
import torch

from lib.core.errors import DataError
from lib.core.paths import CACHE_DIR
from lib.models.shipped import SHIPPED, is_shipped, shipped_path
from lib.models.weights import (
    TIMM_LITE0_NAME,
    check_state_dict_matches,
    convert_lukemelas_lite0,
    ensure_timm_lite0_weights,
)

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


def input_side(data_config: dict) -> int:
    """Network input side in pixels from a timm data config (input_size = (C, H, W), square)."""
    _, height, width = data_config["input_size"]
    if height != width:
        raise DataError(f"backbone input size {height}x{width} is not square")
    return int(height)


def native_data_config(data_config: dict, side: int) -> dict:
    """A copy of ``data_config`` whose input size is ``side`` (e.g. the crop: no resizing)."""
    return {**data_config, "input_size": (3, int(side), int(side))}


def embed_data_config(model: torch.nn.Module, crop: int, input_size: str | int) -> dict:
    """The backbone's data config (mean, std) with input size 'crop' (native pixels), 'model' or an int."""
    config = resolve_data_config(model)
    if input_size == "model":
        return config
    side = crop if input_size in ("crop", None, 0) else int(input_size)
    return native_data_config(config, side)


def resolve_weights(weights: str | None, cache_dir: Path = CACHE_DIR) -> Path | None:
    """``None``/'none' -> random init, 'lite0' -> offline ImageNet Lite0 (converted once), a shipped name
    ('lymph-ssl': weights/, its content hash checked) -> its file, else a file."""
    if weights in (None, "", "none"):
        return None
    if is_shipped(weights):
        return shipped_path(weights)
    if weights == "lite0":
        return ensure_timm_lite0_weights(Path(cache_dir) / "weights")
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found (give a file, 'lite0', {', '.join(map(repr, SHIPPED))} or "
                        f"'none')")
    return path


def weights_tag(model: torch.nn.Module) -> str:
    """Cache-key tag of a backbone's weights: SHA-1 prefix of its parameters and buffers (names, shapes, values).

    Hashing the tensors rather than the weights file keeps the key stable when the same weights are
    re-serialised (torch.save archives embed the temporary file name, so their bytes differ).
    """
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


def build_backbone(name: str, weights: Path | None, seed: int) -> torch.nn.Module:
    """timm backbone (pooled features) with local weights, or seeded random init when weights is None."""
    torch.manual_seed(seed)
    return create_backbone(name, pretrained=False, weights=weights)


def block_groups(model: torch.nn.Module) -> list[list[str]]:
    """The backbone's module names in timm's coarse groups, input side first (group 0 is the stem)."""
    if not hasattr(model, "group_matcher"):
        raise DataError(f"backbone {type(model).__name__} has no timm group_matcher: --freeze-blocks is unavailable")
    groups = timm.models.group_modules(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def frozen_modules(model: torch.nn.Module, n: int) -> list[str]:
    """Module names of the first ``n`` coarse groups; DataError when the backbone has fewer."""
    if n == 0:
        return []
    groups = block_groups(model)
    if not 0 <= n <= len(groups):
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise DataError(f"--freeze-blocks {n}: backbone {name} has {len(groups)} blocks "
                        f"(stem + {len(groups) - 1} stages); use 0..{len(groups)}")
    return [name for group in groups[:n] for name in group]


def freeze_blocks(model: torch.nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` coarse groups (stem, then stages): no gradients, fixed BatchNorm statistics.

    timm.utils.freeze turns their BatchNorm layers into FrozenBatchNorm2d, so training mode leaves the
    running statistics as loaded. Returns the frozen module names.
    """
    names = frozen_modules(model, n)
    if names:
        timm.utils.freeze(model, names, include_bn_running_stats=True)
    return names
