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
