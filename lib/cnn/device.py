"""Where and in which precision the CNN runs: device resolution and autocast dtypes (CPU bf16 where native)."""
from __future__ import annotations

import torch

from lib.core.errors import DataError


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise DataError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 matmul (AVX512-BF16 or AMX): bf16 inference is then ~3x faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def autocast_dtype(amp: str, device: torch.device, training: bool) -> torch.dtype | None:
    """Autocast dtype of ``--amp``; auto: CUDA bf16 (fp16 if unsupported), CPU bf16 for inference only (if native)."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if (not training and cpu_has_bf16()) else None


def training_autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of training under ``--amp`` (pretraining and the finetune regime).

    auto: bf16 on CUDA (fp16 if unsupported); on CPU bf16 when it is native (AMX/AVX512-BF16: dense
    convolutions train 2-3x faster), fp32 otherwise. The dtype used is recorded with the results.
    """
    if amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    return autocast_dtype(amp, device, training=True)


def strided_convs_on_one_pixel(backbone: torch.nn.Module, side: int) -> list[str]:
    """Names of the strided convolutions that see a map one pixel wide or high at ``side`` x ``side`` inputs.

    One forward pass in eval mode without gradient on a blank image (no batch-norm statistic or RNG moves)."""
    hits: list[str] = []

    def hook(name: str):
        def record(module, inputs, _output):
            if any(size == 1 and stride > 1 for size, stride in zip(inputs[0].shape[-2:], module.stride)):
                hits.append(name)
        return record

    convs = [(n, m) for n, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d) and max(m.stride) > 1]
    handles = [m.register_forward_hook(hook(n)) for n, m in convs]
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, side, side))
    finally:
        backbone.train(was_training)
        for handle in handles:
            handle.remove()
    return hits


def check_bf16_training_shapes(backbone: torch.nn.Module, sides: list[int], dtype: torch.dtype | None,
                               device: torch.device, backbone_name: str) -> None:
    """Refuse CPU bf16 training where a strided convolution would see a one-pixel map (DataError).

    oneDNN's bf16 weight gradient of such a convolution reads memory it never wrote (torch 2.14, measured on
    AVX512-BF16: non-repeatable values, sometimes inf/NaN), so two identical runs differ and training can
    diverge. fp32 is exact there. Checked whether or not the CPU has native bf16, so the refusal is the
    same on every machine."""
    if dtype != torch.bfloat16 or device.type != "cpu":
        return
    for side in sorted(set(sides)):
        hits = strided_convs_on_one_pixel(backbone, side)
        if hits:
            raise DataError(f"bf16 training on CPU: {backbone_name}'s strided convolution {hits[0]} sees a 1-pixel "
                            f"map at {side}-px inputs, where the CPU's bf16 weight gradient is garbage (non-repeatable"
                            f", sometimes NaN): use larger inputs (--input-size / --local-size) or --amp off")
