"""The default pipeline's stages as commands (``[script.py, *argv]``, run in the repository): prepare, the four
models (clinical, clinical+morphometry, CNN mean head, CNN attention head) on one fold seed, the optional
label-free encoder and fine-tuned CNN, then the ensemble, its report and the submission. Light: no torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib.core.paths import CONFIGS_DIR
from lib.fusion.fuse import DEFAULT_FUSION

MODELS = ("clinical", "morpho", "cnn", "cnn_attention")
FINETUNE_CONFIG = CONFIGS_DIR / "cnn_cpu_finetune.yaml"

Stage = tuple[str, list[str]]  # (name, script + arguments)


@dataclass(frozen=True)
class PipelineSettings:
    """What the stage commands are built from (absolute paths: the stages run in the repository).

    ``cnn_config``: train_cnn.py's preset; ``pretrain_config``: pretrain_cnn.py's preset of the label-free encoder
    (None: no encoder, ImageNet weights); ``with_finetune``: the preset of a CNN fine-tuned end to end (None: not in
    the blend); ``trials`` and ``fusion``: ensemble.py's; ``out``: the submission."""
    runs_dir: Path
    folds_dir: Path
    cache_dir: Path
    out: Path
    cnn_config: Path | None = None
    pretrain_config: Path | None = None
    with_finetune: Path | None = None
    trials: int = 100
    fusion: str = DEFAULT_FUSION


def models(settings: PipelineSettings) -> tuple[str, ...]:
    """The blended models' run names."""
    return (*MODELS, "cnn_finetune") if settings.with_finetune else MODELS


def pretrain_stage(data_dir: Path, name: str, settings: PipelineSettings) -> Stage:
    """The label-free encoder of the data directory, shared by every fold seed: runs/<dataset>_ssl/."""
    return ("pretrain", ["pretrain_cnn.py", "-c", str(settings.pretrain_config), "--data-dir", str(data_dir),
                         "--runs-dir", str(settings.runs_dir), "--cache-dir", str(settings.cache_dir), "--experiment",
                         f"{name}_ssl", "--resume"])


def encoder_weights(name: str, settings: PipelineSettings) -> list[str]:
    """train_cnn.py's --weights of the pretrained encoder (none without a pretrain config)."""
    return ["--weights", str(settings.runs_dir / f"{name}_ssl" / "encoder.pth")] if settings.pretrain_config else []


def run_options(data_dir: Path, seed: int, settings: PipelineSettings) -> list[str]:
    """The data, runs, folds and cache options every training stage of one fold seed takes."""
    return ["--data-dir", str(data_dir), "--runs-dir", str(settings.runs_dir), "--fold-seed", str(seed),
            "--folds-dir", str(settings.folds_dir), "--cache-dir", str(settings.cache_dir)]


def model_stages(data_dir: Path, name: str, seed: int, settings: PipelineSettings) -> list[Stage]:
    """The stages up to the models, on the folds of one seed (runs/<name>_s<seed>/)."""
    tag = f"{name}_s{seed}"
    data = ["--data-dir", str(data_dir)]
    folds = ["--fold-seed", str(seed), "--folds-dir", str(settings.folds_dir)]
    common = [*run_options(data_dir, seed, settings), "--resume"]
    cnn = ["train_cnn.py", "-c", str(settings.cnn_config), *common, *encoder_weights(name, settings)]
    run = {model: f"{tag}/{model}" for model in models(settings)}
    finetune = [("cnn_finetune", ["train_cnn.py", "-c", str(settings.with_finetune), *common,
                                  *encoder_weights(name, settings), "--experiment", run["cnn_finetune"]])
                ] if settings.with_finetune else []
    return [
        ("prepare", ["prepare_data.py", *data, *folds]),
        ("clinical", ["train_clinical.py", *common, "--experiment", run["clinical"]]),
        ("morpho", ["train_clinical.py", *common, "--feature-set", "clinical+morpho", "--experiment", run["morpho"]]),
        ("cnn", [*cnn, "--experiment", run["cnn"]]),
        ("cnn_attention", [*cnn, "--head", "attention", "--experiment", run["cnn_attention"]]),
        *finetune,
    ]


def ensemble_command(runs_dir: Path, tag: str, names, experiment: str, trials: int,
                     fusion: str = DEFAULT_FUSION) -> list[str]:
    """ensemble.py over the runs ``names`` under ``runs_dir/tag``, into ``tag/experiment`` (resumed when it exists)."""
    return ["ensemble.py", "--runs", *(str(runs_dir / tag / m) for m in names), "--runs-dir", str(runs_dir),
            "--experiment", f"{tag}/{experiment}", "--trials", str(trials), "--fusion", fusion, "--resume"]


def blend_stages(data_dir: Path, tag: str, settings: PipelineSettings,
                 names: tuple[str, ...] | None = None) -> list[Stage]:
    """The ensemble of the models under ``tag`` (``names``, default ``models(settings)``), its report and the
    submission."""
    data = ["--data-dir", str(data_dir)]
    ensemble_dir = str(settings.runs_dir / tag / "ensemble")
    return [
        ("ensemble", ensemble_command(settings.runs_dir, tag, names or models(settings), "ensemble", settings.trials,
                                      settings.fusion)),
        ("report", ["report.py", "--ensemble", ensemble_dir, *data]),
        ("submission", ["make_submission.py", *data, "--ensemble", ensemble_dir, "--out", str(settings.out)]),
    ]
