"""Model zoo: timm backbones with offline weights (backbones, weights), MIL pooling heads (heads; their names in
names), the clinical estimator (clinical) and the cell anomaly model (anomaly). Import the submodule you need:
nothing is imported here, so the clinical path never loads torch."""
