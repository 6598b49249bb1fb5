"""MIL pooling heads: bag of instance features (+ clinical vector, + anomaly scores) -> patient logit.

Every head is called as ``head(x, clinical=None, anomaly=None, mask=None)`` with
``x`` (n, in_dim) for one bag, or a padded batch (B, n, in_dim) with ``mask`` (B, n) bool
(True = real cell; None = all real). It returns a dict with
``"logit"``: shape () for one bag or (B,) for a batch (pre-sigmoid; 1 = tumoral), and
``"weights"``: (n,) or (B, n) per-cell weights, exactly 0 on padding.
Score-pooling heads also return ``"scores"``: the per-cell instance logits (n,) / (B, n).
Whether "weights" sums to one over a bag is the class attribute ``weights_sum_to_one``.

Instances first go through ``Linear(in_dim, hidden_dim) -> ReLU -> Dropout(dropout)``.
Early fusion: with ``clinical_dim > 0`` the clinical vector (c,) / (B, c), expected already
standardised by the data pipeline, is concatenated to the bag embedding before the final
linear classifier; heads that pool instance scores add a linear term ``w . clinical``
(chowder concatenates it to its MLP input).
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.errors import DataError
from lib.models.options import HEAD_NAMES

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


# ----------------------------------------------------------------------------- input handling
def _batch_first(t: torch.Tensor | None, single: bool) -> torch.Tensor | None:
    """Add the batch dimension to a one-bag tensor."""
    return t.unsqueeze(0) if (t is not None and single) else t


def _check_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Validate (or build) the (B, n) bool mask of real cells; every bag needs one."""
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"MIL head: mask shape {tuple(mask.shape)} does not match bags {tuple(x.shape[:2])}")
    mask = mask.bool()
    if x.shape[1] == 0 or not bool(mask.any(dim=1).all()):
        raise ValueError("MIL head: empty bag (a patient with no cell)")
    return mask


def _check_clinical(clinical: torch.Tensor | None, expected: int, batch: int) -> None:
    """Raise ValueError (a programming error, not bad input) unless clinical is (B, expected), or absent when 0."""
    if expected == 0 and clinical is not None:
        raise ValueError("MIL head: got a clinical vector but the head was built with clinical_dim=0")
    if expected > 0 and (clinical is None or tuple(clinical.shape) != (batch, expected)):
        got = None if clinical is None else tuple(clinical.shape)
        raise ValueError(f"MIL head: clinical must have {expected} features per bag, got shape {got}")


def _check_anomaly(anomaly: torch.Tensor | None, mask: torch.Tensor) -> None:
    """Raise ValueError (a programming error) unless anomaly scores have one value per cell slot."""
    if anomaly is not None and anomaly.shape != mask.shape:
        raise ValueError(f"MIL head: anomaly shape {tuple(anomaly.shape)} does not match bags {tuple(mask.shape)}")


def _unbatch(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the batch dimension of every output (one-bag call)."""
    return {k: v.squeeze(0) for k, v in out.items()}


# ----------------------------------------------------------------------------- masked pooling
def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over cells (last dim), 0 on padding."""
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real cells: (B, n, d) -> (B, d)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1)


def _selection_weights(indices: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Per-cell share of the selected slots: counts of indices (B, k) where valid, divided by slots used."""
    counts = torch.zeros(indices.shape[0], n, device=indices.device)
    counts.scatter_add_(1, indices, valid.to(counts.dtype))
    return counts / valid.sum(dim=1, keepdim=True).to(counts.dtype)


def _extreme_scores(
    scores: torch.Tensor, mask: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """k highest (or lowest) scores per bag (B, k) and their cell indices; short bags repeat their last value."""
    fill = float("-inf") if largest else float("inf")
    values, order = scores.masked_fill(~mask, fill).sort(dim=1, descending=largest)
    n_valid = mask.sum(dim=1, keepdim=True)
    slot = torch.arange(k, device=scores.device).unsqueeze(0)
    slot = torch.minimum(slot.expand(scores.shape[0], k), n_valid - 1)
    return values.gather(1, slot), order.gather(1, slot)


# ----------------------------------------------------------------------------- building blocks
class FusionClassifier(nn.Module):
    """Dropout then Linear on [bag embedding, clinical] -> logit (B,)."""

    def __init__(self, emb_dim: int, clinical_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(emb_dim + clinical_dim, 1)

    def forward(self, z: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Logit (B,) from embedding (B, e) and optional clinical (B, c)."""
        if clinical is not None:
            z = torch.cat([z, clinical.to(z.dtype)], dim=-1)
        return self.linear(self.dropout(z)).squeeze(-1)


class ClinicalTerm(nn.Module):
    """Linear term w . clinical added to a pooled score (0 when clinical_dim == 0)."""

    def __init__(self, clinical_dim: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(clinical_dim, 1, bias=False) if clinical_dim > 0 else None

    def forward(self, clinical: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """(B,) contribution of the clinical vector, zeros without one."""
        if self.linear is None or clinical is None:
            return torch.zeros_like(like)
        return self.linear(clinical.to(like.dtype)).squeeze(-1)


class GatedAttention(nn.Module):
    """Gated attention logits of Ilse et al. 2018: w^T (tanh(V h) * sigmoid(U h)) -> (B, n)."""

    def __init__(self, dim: int, attn_dim: int = 64) -> None:
        super().__init__()
        self.v = nn.Linear(dim, attn_dim)
        self.u = nn.Linear(dim, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Attention logits (B, n) for instance embeddings (B, n, d)."""
        return self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)


# ----------------------------------------------------------------------------- heads
class MILHead(nn.Module):
    """Base head: checks inputs, embeds instances, delegates pooling to ``pool``."""

    weights_sum_to_one: bool = True
    needs_anomaly: bool = False

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or hidden_dim < 1 or clinical_dim < 0:
            raise DataError(f"MIL head: bad sizes in_dim={in_dim} hidden_dim={hidden_dim} clinical_dim={clinical_dim}")
        self.in_dim, self.clinical_dim, self.hidden_dim = in_dim, clinical_dim, hidden_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def _prepare(
        self, x: torch.Tensor, clinical: torch.Tensor | None, anomaly: torch.Tensor | None, mask: torch.Tensor | None
    ) -> Batch:
        """Validate inputs and bring them to batch-first form."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_dim:
            d = self.in_dim
            raise ValueError(f"MIL head: features must be (n, {d}) or (B, n, {d}), got {tuple(x.shape)}")
        single = x.dim() == 2
        x, clinical, anomaly = (_batch_first(t, single) for t in (x, clinical, anomaly))
        mask = _check_mask(_batch_first(mask, single), x)
        _check_clinical(clinical, self.clinical_dim, x.shape[0])
        _check_anomaly(anomaly, mask)
        if self.needs_anomaly and anomaly is None:
            raise ValueError(f"MIL head '{type(self).__name__}': anomaly scores (anomaly=) are required")
        return x, mask, clinical, anomaly

    def forward(
        self,
        x: torch.Tensor,
        clinical: torch.Tensor | None = None,
        anomaly: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{'logit': () or (B,), 'weights': (n,) or (B, n), ...} for one bag (n, d) or a padded batch (B, n, d)."""
        single = x.dim() == 2
        x, mask, clinical, anomaly = self._prepare(x, clinical, anomaly, mask)
        h = self.encoder(x).masked_fill(~mask.unsqueeze(-1), 0.0)
        if anomaly is not None:
            anomaly = anomaly.to(h.dtype).masked_fill(~mask, 0.0)
        out = self.pool(h, mask, clinical, anomaly)
        return _unbatch(out) if single else out

    def pool(self, h, mask, clinical, anomaly) -> dict[str, torch.Tensor]:
        """Pool embedded instances (B, n, hidden) into logits; implemented by subclasses."""
        raise NotImplementedError


class TwoModeHead(MILHead):
    """A head that pools embeddings (then a classifier) or instance scores (plus a clinical term)."""

    default_mode = "embedding"

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 mode: str | None = None) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout)
        self.mode = _check_mode(mode or self.default_mode)
        if self.mode == "embedding":
            self.classifier = FusionClassifier(hidden_dim, clinical_dim, dropout)
        else:
            self.score, self.clinical_term = nn.Linear(hidden_dim, 1), ClinicalTerm(clinical_dim)


class MeanHead(TwoModeHead):
    """Mean pooling. mode='embedding': classify the mean embedding; mode='score': mean of instance logits.

    weights = 1/n per cell (sum to one).
    """

    def pool(self, h, mask, clinical, anomaly):
        """Mean of embeddings (then classifier) or mean of instance scores (+ clinical term)."""
        weights = mask.to(h.dtype) / mask.sum(dim=1, keepdim=True)
        if self.mode == "embedding":
            return {"logit": self.classifier(masked_mean(h, mask), clinical), "weights": weights}
        scores = self.score(h).squeeze(-1)
        logit = (scores * weights).sum(dim=1) + self.clinical_term(clinical, scores[:, 0])
        return {"logit": logit, "weights": weights, "scores": scores}


class MaxHead(TwoModeHead):
    """Max pooling. mode='score' (default, mi-Net style): max of instance logits, weights one-hot on the argmax cell;
    mode='embedding': element-wise max of the embedding then classifier, weights = share of embedding
    dimensions each cell wins. Weights sum to one in both modes.
    """

    default_mode = "score"

    def pool(self, h, mask, clinical, anomaly):
        """Max of instance scores (+ clinical term) or element-wise max embedding (then classifier)."""
        n = h.shape[1]
        if self.mode == "embedding":
            z, idx = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1)
            weights = _selection_weights(idx, torch.ones_like(idx, dtype=torch.bool), n)
            return {"logit": self.classifier(z, clinical), "weights": weights}
        scores = self.score(h).squeeze(-1)
        top, idx = scores.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True)
        weights = _selection_weights(idx, torch.ones_like(idx, dtype=torch.bool), n)
        logit = top.squeeze(1) + self.clinical_term(clinical, top.squeeze(1))
        return {"logit": logit, "weights": weights, "scores": scores}


class TopKHead(MILHead):
    """Mean of the k highest instance logits (all cells when the bag has fewer than k).

    weights = 1/k_used on the selected cells, 0 elsewhere (sum to one); scores = instance logits.
    """

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 k: int = 5) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout)
        self.k = _check_k(k)
        self.score, self.clinical_term = nn.Linear(hidden_dim, 1), ClinicalTerm(clinical_dim)

    def pool(self, h, mask, clinical, anomaly):
        """Mean of top-k instance scores plus the clinical term."""
        scores = self.score(h).squeeze(-1)
        kk = min(self.k, h.shape[1])
        values, idx = scores.masked_fill(~mask, float("-inf")).topk(kk, dim=1)
        valid = torch.arange(kk, device=h.device).unsqueeze(0) < mask.sum(dim=1, keepdim=True)
        top_mean = torch.where(valid, values, 0.0).sum(dim=1) / valid.sum(dim=1)
        logit = top_mean + self.clinical_term(clinical, top_mean)
        return {"logit": logit, "weights": _selection_weights(idx, valid, h.shape[1]), "scores": scores}


class ChowderHead(MILHead):
    """CHOWDER (Courtiol et al. 2018): top-k and bottom-k instance logits -> MLP (clinical joins the MLP input).

    Bags with fewer than k cells repeat their last sorted value. weights = share of the 2k selected
    slots each cell fills (sum to one); scores = instance logits.
    """

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 k: int = 5, mlp_dim: int = 32) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout)
        self.k = _check_k(k)
        self.score = nn.Linear(hidden_dim, 1)
        self.mlp = nn.Sequential(
            nn.Linear(2 * self.k + clinical_dim, mlp_dim), nn.Sigmoid(), nn.Dropout(dropout), nn.Linear(mlp_dim, 1)
        )

    def pool(self, h, mask, clinical, anomaly):
        """MLP on sorted extreme scores (+ clinical)."""
        scores = self.score(h).squeeze(-1)
        top, top_idx = _extreme_scores(scores, mask, self.k, largest=True)
        low, low_idx = _extreme_scores(scores, mask, self.k, largest=False)
        feats = [top, low] + ([clinical.to(top.dtype)] if clinical is not None else [])
        idx = torch.cat([top_idx, low_idx], dim=1)
        weights = _selection_weights(idx, torch.ones_like(idx, dtype=torch.bool), h.shape[1])
        return {"logit": self.mlp(torch.cat(feats, dim=1)).squeeze(-1), "weights": weights, "scores": scores}


class AttentionHead(MILHead):
    """Gated attention ABMIL (Ilse et al. 2018). weights = softmax attention (sum to one)."""

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 attn_dim: int = 64) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim)
        self.classifier = FusionClassifier(hidden_dim, clinical_dim, dropout)

    def attention_logits(self, h: torch.Tensor, anomaly: torch.Tensor | None) -> torch.Tensor:
        """Unnormalised attention (B, n)."""
        return self.attention(h)

    def bag_embedding(self, h, weights, mask, anomaly) -> torch.Tensor:
        """Attention-weighted mean embedding (B, hidden)."""
        return (weights.unsqueeze(-1) * h).sum(dim=1)

    def pool(self, h, mask, clinical, anomaly):
        """Softmax attention pooling then classifier."""
        weights = masked_softmax(self.attention_logits(h, anomaly), mask)
        z = self.bag_embedding(h, weights, mask, anomaly)
        return {"logit": self.classifier(z, clinical), "weights": weights}


class AnomalyAttentionHead(AttentionHead):
    """Anomaly-aware attention (after Kazeminia et al. 2022): attention logit + learned scale * anomaly score.

    ``anomaly`` (n,) / (B, n) are standardised per-cell anomaly scores (see ``anomaly_scores``).
    weights = softmax attention (sum to one). With anomaly_feature=True the bag embedding also gets
    the bag's mean anomaly and the attention-weighted mean anomaly (softmax ignores a bag-wide shift).
    """

    needs_anomaly = True

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 attn_dim: int = 64, *, anomaly_scale_init: float = 1.0, anomaly_feature: bool = True) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout, attn_dim)
        self.anomaly_feature = anomaly_feature
        self.anomaly_scale = nn.Parameter(torch.tensor(float(anomaly_scale_init)))
        if anomaly_feature:
            self.classifier = FusionClassifier(hidden_dim + 2, clinical_dim, dropout)

    def attention_logits(self, h, anomaly):
        """Gated attention logits shifted by the scaled anomaly score."""
        return self.attention(h) + self.anomaly_scale * anomaly

    def bag_embedding(self, h, weights, mask, anomaly):
        """Weighted mean embedding, optionally with [mean anomaly, attention-weighted anomaly]."""
        z = (weights.unsqueeze(-1) * h).sum(dim=1)
        if not self.anomaly_feature:
            return z
        mean_anomaly = (anomaly * mask).sum(dim=1) / mask.sum(dim=1)
        return torch.cat([z, mean_anomaly.unsqueeze(1), (weights * anomaly).sum(dim=1, keepdim=True)], dim=1)


class InstanceBNHead(MILHead):
    """Learned instance weighting: w = sigmoid(BatchNorm1d(instance logit)); bag = sum(w h) / sum(w).

    weights = w in (0, 1), NOT summing to one; scores = raw instance logits. BatchNorm statistics pool all
    real cells of the batch; a training call with a single cell in total uses the running statistics.
    """

    weights_sum_to_one = False

    def __init__(self, in_dim: int, clinical_dim: int = 0, hidden_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__(in_dim, clinical_dim, hidden_dim, dropout)
        self.score = nn.Linear(hidden_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        self.classifier = FusionClassifier(hidden_dim, clinical_dim, dropout)

    def _normalise(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BatchNorm over the real cells only; padding stays 0."""
        real = scores[mask].unsqueeze(1)
        bn = self.bn
        use_batch_stats = self.training and real.shape[0] > 1
        normed = F.batch_norm(real, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                              use_batch_stats, bn.momentum, bn.eps)
        if use_batch_stats:
            bn.num_batches_tracked += 1
        return torch.zeros_like(scores).masked_scatter(mask, normed.squeeze(1))

    def pool(self, h, mask, clinical, anomaly):
        """Sigmoid-BN weighted mean embedding then classifier."""
        scores = self.score(h).squeeze(-1)
        weights = torch.sigmoid(self._normalise(scores, mask)) * mask
        z = (weights.unsqueeze(-1) * h).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return {"logit": self.classifier(z, clinical), "weights": weights, "scores": scores}


def _check_mode(mode: str) -> str:
    """Validate a mean/max pooling mode."""
    if mode not in ("embedding", "score"):
        raise DataError(f"MIL head: mode must be 'embedding' or 'score', got '{mode}'")
    return mode


def _checked_option(head: str, key: str, value, default):
    """A --head-args value of the type of the option's default and within its range (DataError otherwise):
    sizes and k are whole numbers >= 1, dropout is in [0, 1), switches are true/false, scales are numbers."""
    where = f"MIL head '{head}': {key}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise DataError(f"{where} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
            raise DataError(f"{where} must be a whole number >= 1")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where} must be a finite number")
        if key == "dropout" and not 0 <= value < 1:
            raise DataError(f"{where} must be in [0, 1)")
        return float(value)
    return value


def _check_k(k: int) -> int:
    """Validate a top-k size."""
    if int(k) < 1:
        raise DataError(f"MIL head: k must be >= 1, got {k}")
    return int(k)


class GatedFusion(nn.Module):
    """Gated fusion (Sahasrabudhe et al. 2021): an image expert and a clinical expert mixed by a clinical gate.

    The image expert is any head without clinical input; the clinical expert is a logistic model of the
    clinical vector; the gate g = sigmoid(a . clinical + b) decides per patient how much the images count:
    logit = g * image_logit + (1 - g) * clinical_logit. Cell weights are the image expert's; ``gate`` is
    returned beside them.
    """

    def __init__(self, image: MILHead, clinical_dim: int) -> None:
        super().__init__()
        if clinical_dim < 1:
            raise DataError("gated clinical fusion needs the clinical features (clinical_dim >= 1)")
        self.image, self.clinical_dim = image, clinical_dim
        self.expert = nn.Linear(clinical_dim, 1)
        self.gate = nn.Linear(clinical_dim, 1)
        self.weights_sum_to_one, self.needs_anomaly = image.weights_sum_to_one, image.needs_anomaly

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None, anomaly: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.image(x, anomaly=anomaly, mask=mask)
        single = x.dim() == 2
        _check_clinical(_batch_first(clinical, single), self.clinical_dim, 1 if single else x.shape[0])
        clinical = clinical.to(out["logit"].dtype)
        gate = torch.sigmoid(self.gate(clinical)).squeeze(-1)
        logit = gate * out["logit"] + (1 - gate) * self.expert(clinical).squeeze(-1)
        return {**out, "logit": logit, "gate": gate}


FUSIONS = ("concat", "gate")


HEADS: dict[str, type[MILHead]] = {
    "mean": MeanHead,
    "max": MaxHead,
    "topk": TopKHead,
    "chowder": ChowderHead,
    "attention": AttentionHead,
    "instance_bn": InstanceBNHead,
    "anomaly": AnomalyAttentionHead,
}


def create_head(name: str, in_dim: int, clinical_dim: int = 0, fusion: str = "concat", **kwargs) -> nn.Module:
    """Build the MIL head called name (see HEAD_NAMES); kwargs: hidden_dim, dropout and head-specific options.

    fusion (with clinical_dim > 0): 'concat' feeds the clinical vector to the head itself (early fusion),
    'gate' wraps the head without it in a GatedFusion with a clinical expert and gate.
    """
    if fusion not in FUSIONS:
        raise DataError(f"clinical fusion '{fusion}' is not one of {', '.join(FUSIONS)}")
    if name not in HEADS:
        raise DataError(f"unknown MIL head '{name}' (choose from {', '.join(HEAD_NAMES)})")
    parameters = inspect.signature(HEADS[name].__init__).parameters
    accepted = set(parameters) - {"self", "in_dim", "clinical_dim"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise DataError(
            f"MIL head '{name}': unknown option(s) {', '.join(unknown)} (accepted: {', '.join(sorted(accepted))})"
        )
    kwargs = {key: _checked_option(name, key, value, parameters[key].default) for key, value in kwargs.items()}
    if fusion == "gate" and clinical_dim > 0:
        return GatedFusion(HEADS[name](in_dim, clinical_dim=0, **kwargs), clinical_dim)
    return HEADS[name](in_dim, clinical_dim=clinical_dim, **kwargs)
