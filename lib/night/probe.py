"""A few seconds of this machine's own throughput, before the night is planned: frozen Lite0 embedding (the
default CNN stages' cost) and SimCLR training steps of the pretraining preset's backbone (the encoder's cost),
on random tensors in the presets' precision (bf16 where the CPU has it natively), untrained weights."""
from __future__ import annotations

import os
import time

import timm
import torch

from lib.cnn.device import autocast_dtype, cpu_has_bf16, resolve_device, training_autocast_dtype
from lib.core.machine import cpu_model

PRETRAIN_OVERHEAD = 1.25  # the augmented views and the loss around the bare step, measured against a real epoch


def _rate(step, images_per_step: int, seconds: float, windows: int = 3) -> float:
    """Images per second of ``step`` after one warm-up call: the best of ``windows`` windows of ``seconds`` / windows
    each (a shared or throttled core slows some windows; the best one is the machine's rate)."""
    step()
    rates = []
    for _ in range(windows):
        began, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - began < seconds / windows:
            step()
            n += 1
        rates.append(n * images_per_step / (time.perf_counter() - began))
    return max(rates)


def embed_rate(side: int = 112, batch: int = 32, seconds: float = 2.0, device: str = "auto") -> float:
    """Frozen tf_efficientnet_lite0 forward passes per second at ``side`` px (the default CNN preset's input)."""
    dev = resolve_device(device)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval().to(dev)
    x = torch.randn(batch, 3, side, side, device=dev).contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype("auto", dev, training=False)

    def step():
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            model(x)
    return _rate(step, batch, seconds)


def pretrain_rate(backbone: str = "resnet10t", side: int = 64, batch: int = 64, seconds: float = 2.0,
                  device: str = "auto") -> float:
    """Cells per second of SimCLR-style training steps (two views per cell) of ``backbone`` at ``side`` px."""
    dev = resolve_device(device)
    model = timm.create_model(backbone, pretrained=False, num_classes=0).to(dev).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2 * batch, 3, side, side, device=dev).contiguous(memory_format=torch.channels_last)
    dtype = training_autocast_dtype("auto", dev)

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return _rate(step, batch, seconds) / PRETRAIN_OVERHEAD


def machine() -> dict:
    """CPU model, cores, native bf16, torch threads: named in the plan and the summary."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "native_bf16": cpu_has_bf16(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def probe(pretrain_backbone: str = "resnet10t", pretrain_side: int = 64, seconds: float = 2.0) -> dict:
    """The rates the planner needs, and what was measured on."""
    began = time.perf_counter()
    rates = {"embed_img_s": embed_rate(seconds=seconds),
             "pretrain_img_s": pretrain_rate(pretrain_backbone, pretrain_side, seconds=seconds)}
    return {**rates, **machine(), "probe_s": time.perf_counter() - began}
