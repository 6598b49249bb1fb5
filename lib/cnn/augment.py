"""Image augmentation: one factory for train/eval pipelines, and dihedral test-time views.

Cells are photographed from above, so every rotation and flip of a cell is another valid cell:
both presets use all 8 dihedral symmetries. ``light`` adds a small affine and mild colour jitter;
``heavy`` adds a random resized crop, stronger affine and stain (hue/saturation/gamma) jitter, blur,
noise and coarse dropout. Normalisation (mean, std) and the network input size come from the
backbone's timm data config (``lib.models.backbones.resolve_data_config``); a caller that wants native-resolution
crops sets ``data_config["input_size"]`` to the crop size (see ``lib.models.backbones.native_data_config``).
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from lib.cnn.settings import MAX_TTA, STRENGTHS
from lib.core.errors import DataError
from lib.models.backbones import input_side, native_data_config


def _resize(side: int, crop: int) -> list:
    """Resize to the network input when it differs from the crop."""
    interpolation = cv2.INTER_AREA if side < crop else cv2.INTER_CUBIC
    return [] if side == crop else [A.Resize(side, side, interpolation=interpolation)]


def _light(side: int, crop: int) -> list:
    """Dihedral symmetries, small affine, mild colour jitter (at the smaller of crop and input size: shrinking
    first keeps the per-pixel colour jitter cheap at small inputs, 64 px from 112-px crops)."""
    resize, shrink = _resize(side, crop), side < crop
    return [
        *(resize if shrink else []),
        A.SquareSymmetry(p=1.0),
        A.Affine(translate_percent=(-0.04, 0.04), scale=(0.95, 1.05), rotate=(-15, 15),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.ColorJitter(brightness=(0.9, 1.1), contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=(-0.02, 0.02), p=0.5),
        *([] if shrink else resize),
    ]


def _heavy(side: int, crop: int) -> list:
    """Random resized crop, dihedral, affine, stain/colour jitter, blur, noise, coarse dropout."""
    return [
        A.RandomResizedCrop(size=(side, side), scale=(0.7, 1.0), ratio=(0.9, 1.1), p=1.0),
        A.SquareSymmetry(p=1.0),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-45, 45), shear=(-5, 5),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.HueSaturationValue(hue_shift_limit=(-8, 8), sat_shift_limit=(-25, 25), val_shift_limit=(-15, 15), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=(-0.15, 0.15), contrast_limit=(-0.15, 0.15), p=0.5),
        A.RandomGamma(gamma_limit=(85, 115), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.2), p=0.2),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.05, 0.15),
                        hole_width_range=(0.05, 0.15), fill=0, p=0.3),
    ]


def create_transform(train: bool, crop: int, strength: str = "light", data_config: dict | None = None,
                     seed: int | None = None) -> A.Compose:
    """Pipeline uint8 HWC crop (crop x crop) -> normalised float CHW tensor at the data config's input size."""
    if strength not in STRENGTHS:
        raise DataError(f"augmentation strength '{strength}' is not one of {', '.join(STRENGTHS)}")
    config = data_config or native_data_config({"mean": (0.5,) * 3, "std": (0.5,) * 3}, crop)
    side = input_side(config)
    steps = (_light if strength == "light" else _heavy)(side, crop) if train else _resize(side, crop)
    normalise = [A.Normalize(mean=tuple(config["mean"]), std=tuple(config["std"]), max_pixel_value=255.0),
                 ToTensorV2()]
    return A.Compose([*steps, *normalise], seed=seed)


def create_contrastive_transform(crop: int, data_config: dict, seed: int | None = None, colour: str = "jitter",
                                 side: int | None = None, scale: tuple[float, float] = (0.35, 1.0)) -> A.Compose:
    """Self-supervised view pipeline uint8 crop -> normalised tensor at the data config's input size (or ``side``).

    Two independent draws of this pipeline make a positive pair: a random resized crop (the same cell
    at another scale and position: ``scale`` of its area), any dihedral symmetry, colour changes, occasional
    grey and blur. DINO's local views are draws at a smaller ``side`` and ``scale``.
    ``colour``: ``jitter`` follows SimCLR's recipe (brightness, contrast, saturation, a mild hue shift);
    ``stain`` swaps saturation and hue jitter for albumentations' stain augmentation (``HEStain``: the colour
    split into stain concentrations by a randomly chosen stain matrix, each scaled and shifted), the usual
    answer to stain colour that varies by lab and day.
    """
    side = side or input_side(data_config)
    if colour == "stain":
        colours = [A.HEStain(method="random_preset", intensity_scale_range=(0.7, 1.3),
                             intensity_shift_range=(-0.2, 0.2), p=0.8),
                   A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, p=0.8)]
    elif colour == "jitter":
        colours = [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=0.8)]
    else:
        raise ValueError(f"colour augmentation {colour!r} is not one of jitter, stain")
    return A.Compose([
        A.RandomResizedCrop(size=(side, side), scale=scale, ratio=(0.8, 1.25), p=1.0),
        A.SquareSymmetry(p=1.0),
        *colours,
        A.ToGray(p=0.1),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.5), p=0.3),
        A.Normalize(mean=tuple(data_config["mean"]), std=tuple(data_config["std"]), max_pixel_value=255.0),
        ToTensorV2(),
    ], seed=seed)


def apply_batch(transform: A.Compose, images: np.ndarray) -> torch.Tensor:
    """Apply a per-image pipeline to a batch (n, H, W, 3) -> (n, 3, h, w) float tensor."""
    return torch.stack([transform(image=np.ascontiguousarray(img))["image"] for img in images])


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral symmetries (0 = identity) of a batch (..., H, W)."""
    if not 0 <= k <= MAX_TTA:
        raise DataError(f"test-time view {k} is not one of 0..{MAX_TTA}")
    out = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def tta_views(n_tta: int) -> list[int]:
    """Dihedral view indices used at evaluation: identity then flips first (4: hflip, 2: rot180, ...)."""
    if not 0 <= n_tta <= MAX_TTA:
        raise DataError(f"--tta {n_tta} is not in 0..{MAX_TTA}")
    order = [0, 4, 6, 2, 1, 3, 5, 7]  # identity, h-flip, v-flip, rot180, then the rot90 family
    return order[:n_tta + 1]
