"""Model zoo: timm backbones with offline weights, and MIL pooling heads."""
from lib.models.backbones import create_backbone, load_backbone_weights, resolve_data_config
from lib.models.anomaly import AnomalyModel, anomaly_scores, fit_anomaly_model
from lib.models.heads import HEAD_NAMES, MILHead, create_head
from lib.models.weights import convert_lukemelas_lite0, ensure_timm_lite0_weights, lukemelas_lite0_path

__all__ = [
    "HEAD_NAMES",
    "AnomalyModel",
    "MILHead",
    "anomaly_scores",
    "convert_lukemelas_lite0",
    "create_backbone",
    "create_head",
    "ensure_timm_lite0_weights",
    "fit_anomaly_model",
    "load_backbone_weights",
    "lukemelas_lite0_path",
    "resolve_data_config",
]
