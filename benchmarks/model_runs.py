"""The model runs several benchmarks share (beside the benchmarks, not in lib/): one 5-fold CV of the clinical
stage, of a frozen encoder + MIL head, and a nested blend, each through its script's ``main`` and named so that
another benchmark finds and reuses the finished run; and the clinical stage's model on patient features pooled
from a frozen cell encoder (``cv_oof``)."""
from pathlib import Path

import pandas as pd

import ensemble
import train_clinical
import train_cnn
from benchmarks.common import encoder_input_args
from lib.cnn.pooled import cluster_proportions
from lib.core.paths import CONFIGS_DIR
from lib.models import clinical as estimator
from lib.models.projection import BlockProjection

ENCODERS = {"imagenet": CONFIGS_DIR / "cnn_cpu.yaml", "ssl": CONFIGS_DIR / "cnn_cpu_ssl.yaml"}
ENCODER_FEATURES_PREFIX = "encfeat"  # bench_encoder_features' clinical runs, which bench_blend_rules reuses
CLUSTERS = 8
IMAGE_PREFIX = "img_"


def cnn_run_name(encoder: str, head: str, fusion: bool, seed: int) -> str:
    return f"ssl_bench_{encoder}_{head}_{'fusion' if fusion else 'image'}_s{seed}"


def clinical_run_name(prefix: str, feature_set: str, seed: int) -> str:
    return f"{prefix}_{feature_set.replace('+', '_')}_s{seed}"


def cnn_run(args, runs_dir: Path, encoder: str, weights: Path, head: str, fusion: bool, *, seed: int) -> dict:
    """One 5-fold CV of a frozen encoder + head; its metrics."""
    name = cnn_run_name(encoder, head, fusion, seed)
    extra = ["--weights", str(weights), *encoder_input_args(weights)] if encoder == "ssl" else []
    metrics = train_cnn.main(["-c", str(ENCODERS[encoder]), "--data-dir", str(args.data_dir), "--runs-dir", str(runs_dir),
                              "--fold-seed", str(seed), "--experiment", name, "--head", head, "--no-progress",
                              "--clinical-fusion" if fusion else "--no-clinical-fusion", *extra])
    return {**metrics, "run": runs_dir / name}


def clinical_run(args, runs_dir: Path, seed: int, feature_set: str, prefix: str = "ssl_bench", extra=()) -> dict:
    """One 5-fold CV of train_clinical.py on a feature set (``extra``: more options), named
    ``<prefix>_<feature set>_s<seed>``; its metrics."""
    name = clinical_run_name(prefix, feature_set, seed)
    metrics = train_clinical.main(["--data-dir", str(args.data_dir), "--fold-seed", str(seed), "--runs-dir",
                                   str(runs_dir), "--experiment", name, "--feature-set", feature_set, *extra])
    return {**metrics, "run": runs_dir / name}


def blend(args, runs_dir: Path, name: str, runs: list[Path]) -> dict:
    """Honest (nested) BA of the blend of some runs tuned by the fusion study (as published; the equal-weight mean
    of the same runs is in metrics.json too)."""
    result = ensemble.main(["--runs", *map(str, runs), "--runs-dir", str(runs_dir), "--experiment", name,
                            "--fusion", "study", "--trials", str(args.trials), "--nested-trials", str(args.trials)])
    return result["metrics"]["nested"]


def cv_oof(table: pd.DataFrame | None, cells, folds: pd.DataFrame, labels: pd.Series, clinical: pd.DataFrame | None,
           *, pca_dim: int, seed: int) -> pd.DataFrame:
    """5-fold OOF probabilities of one setting (``table`` None: cluster proportions fitted per fold): the clinical
    stage's model (lib.models.projection's block projection fitted on the training fold, then the class-balanced
    logistic regression with C by inner CV); ``pca_dim`` 0 keeps the image block whole."""
    rows = []
    for k in sorted(folds["fold"].unique()):
        train = folds.loc[folds["fold"] != k, "ID"].tolist()
        valid = folds.loc[folds["fold"] == k, "ID"].tolist()
        image = table if table is not None else cluster_proportions(cells, train, CLUSTERS, seed)
        image = image.add_prefix(IMAGE_PREFIX)
        x = image if clinical is None else image.join(clinical)
        if pca_dim:
            x = BlockProjection.fit(x.loc[train], list(image.columns), pca_dim, seed, IMAGE_PREFIX).transform(x)
        y = labels.loc[train].astype(int)
        model = estimator.make_model(estimator.inner_splits(y, 5), seed).fit(x.loc[train], y)
        rows.append(pd.DataFrame({"ID": valid, "fold": k, "target": labels.loc[valid].astype(int).to_numpy(),
                                  "proba": model.predict_proba(x.loc[valid])[:, 1]}))
    return pd.concat(rows, ignore_index=True)
