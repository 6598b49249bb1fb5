"""DINO (self-distillation without labels or negatives, Caron et al. 2021) for the cell encoder, multi-crop.

A student (backbone + head) sees every view of a cell: two global crops at the input size and
``local_crops`` small crops (a fraction of the cell, at a smaller side); a teacher of the same architecture
sees the global crops only and is never trained by gradient: its weights are an exponential moving average
of the student's (momentum rising from ``ema`` to 1 along a cosine over the run). The head is an MLP to a
bottleneck, L2-normalised, then cosine similarities to ``prototypes`` learnt unit vectors (DINO's
weight-normalised last layer with its norm fixed). The loss is the cross-entropy between the teacher's
centred, sharpened distribution over the prototypes (temperature ``teacher_temperature``) of one global view
and the student's (``temperature``) of every other view; the centre (an EMA of the teacher's outputs) keeps
one prototype from winning everything. No negatives: it works at small batches, unlike SimCLR. The encoder
kept is the teacher's backbone (DINO evaluates the teacher). Written here (~100 lines) rather than taken
from ``lightly``, which would pull hydra-core and pytorch-lightning into the runtime requirements.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

CENTER_MOMENTUM = 0.9


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine similarity to unit-norm prototypes (logits before temperature)."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) / math.sqrt(bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              temperature: float, teacher_temperature: float) -> torch.Tensor:
    """Mean cross-entropy of the teacher's targets (one per global view) against the student's other views (fp32)."""
    targets = [F.softmax((t.float() - center) / teacher_temperature, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / temperature, dim=-1) for s in student]
    terms = [-(target * log_p).sum(dim=-1).mean() for i, target in enumerate(targets)
             for j, log_p in enumerate(log_probs) if i != j]
    return torch.stack(terms).mean()


def teacher_momentum(base: float, progress: float) -> float:
    """EMA momentum at ``progress`` (0..1) of the run: ``base`` rising to 1 along a half cosine."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0


class DinoNet(nn.Module):
    """Student (``backbone`` + ``head``), its EMA teacher and the centre of the teacher's outputs."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, bottleneck: int, prototypes: int, *, temperature: float,
                 teacher_temperature: float, ema: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DinoHead(backbone.num_features, hidden_dim, bottleneck, prototypes)
        self.teacher_backbone, self.teacher_head = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        for p in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(prototypes))
        self.temperature, self.teacher_temperature, self.ema = temperature, teacher_temperature, ema

    def student(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def loss(self, views: list[torch.Tensor], autocast) -> torch.Tensor:
        """The DINO loss of a batch: ``views`` = [global 1, global 2, local 1, ...] (each (n, 3, side, side)).

        Views of one size go through the student as one batch; the teacher (no gradient) sees the globals."""
        globals_ = torch.cat(views[:2])
        with autocast():
            student = list(self.student(globals_).chunk(2))
            if len(views) > 2:
                student += list(self.student(torch.cat(views[2:])).chunk(len(views) - 2))
            with torch.no_grad():
                teacher = self.teacher_head(self.teacher_backbone(globals_)).float()
        loss = dino_loss(student, list(teacher.chunk(2)), self.center, self.temperature, self.teacher_temperature)
        with torch.no_grad():
            self.center.mul_(CENTER_MOMENTUM).add_(teacher.mean(dim=0), alpha=1 - CENTER_MOMENTUM)
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the teacher towards the student (momentum by the run's progress)."""
        m = teacher_momentum(self.ema, progress)
        pairs = [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]
        for teacher, student in pairs:
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(m).add_(s.detach(), alpha=1 - m)

    def encoder(self) -> nn.Module:
        """The backbone kept after pretraining: the teacher's."""
        return self.teacher_backbone
