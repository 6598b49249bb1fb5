"""The night's stages as commands, in order, built with the default pipeline's (lib.pipeline.commands) inside the
night directory: the fold files, the encoder, the two studies, on each bag seed the default pipeline's four models,
the night's own and two blends, then the bag of every model and the final blend, report and submission."""
from __future__ import annotations

from pathlib import Path

from lib.fusion.fuse import DEFAULT_FUSION
from lib.night.settings import NightSettings
from lib.pipeline.commands import (
    MODELS,
    PipelineSettings,
    blend_stages,
    encoder_weights,
    ensemble_command,
    model_stages,
    pretrain_stage,
    run_options,
)

DEFAULT_MODELS = MODELS


def pipeline_settings(settings: NightSettings, night_dir: Path, encoder_on: bool) -> PipelineSettings:
    """The default pipeline's settings for its stage builders, inside the night directory."""
    return PipelineSettings(runs_dir=night_dir, folds_dir=settings.folds_dir, cache_dir=settings.cache_dir,
                            out=settings.out, cnn_config=settings.cnn_config,
                            pretrain_config=settings.pretrain_config if encoder_on else None, with_finetune=None,
                            trials=settings.ensemble_trials, fusion="study")


def shipped_weights(settings: NightSettings) -> list[str]:
    """--weights of the shipped encoder the night starts from (none with --encoder-init none)."""
    return ["--weights", settings.encoder_init] if settings.encoder_init != "none" else []


def night_weights(settings: NightSettings, night_dir: Path, name: str, encoder_on: bool) -> list[str]:
    """The --weights of the night's encoder models: the encoder learnt tonight (continued from the shipped one unless
    --encoder-init none), else the shipped encoder as it is, else none (no encoder model tonight)."""
    if encoder_on:
        return encoder_weights(name, pipeline_settings(settings, night_dir, True))
    return shipped_weights(settings)


def study_names(name: str) -> dict[str, str]:
    """The night's study names (unique in a shared storage)."""
    return {"clinical": f"{name}_clinical_study", "cnn": f"{name}_cnn_study"}


def seed_options(settings: NightSettings, data_dir: Path, night_dir: Path, seed: int) -> list[str]:
    """The pipeline's options of a training stage on one fold seed, in the night directory."""
    return run_options(data_dir, seed, pipeline_settings(settings, night_dir, encoder_on=False))


def study_command(kind: str, settings: NightSettings, data_dir: Path, night_dir: Path, name: str,
                  weights: list[str]) -> list[str]:
    """The study's command without --trials (added per chunk)."""
    storage = ["--storage", settings.storage] if settings.storage else []
    base = seed_options(settings, data_dir, night_dir, settings.select_seed) + ["--study", study_names(name)[kind],
                                                                              *storage]
    if kind == "clinical":
        return ["train_clinical.py", *base]
    config = settings.ssl_cnn_config if weights else settings.cnn_config
    return ["train_cnn.py", "-c", str(config), *base, *weights, "--no-progress"]


def night_models(settings: NightSettings, data_dir: Path, night_dir: Path, name: str, seed: int,
                 weights: list[str]) -> list[tuple[str, list[str]]]:
    """The night's extra models on one fold seed: the studies' best, image-only, the encoder's CNNs."""
    tag, run = f"{name}_s{seed}", seed_options(settings, data_dir, night_dir, seed) + ["--resume"]
    cnn_config = str(settings.ssl_cnn_config if weights else settings.cnn_config)
    stages = [("cnn_image", ["train_cnn.py", "-c", cnn_config, *run, *weights, "--no-clinical-fusion"])]
    if weights:
        stages += [("cnn_ssl", ["train_cnn.py", "-c", cnn_config, *run, *weights]),
                   ("cnn_ssl_attention", ["train_cnn.py", "-c", cnn_config, *run, *weights, "--head", "attention"])]
    studies = study_names(name)
    for kind, script in (("clinical", "train_clinical.py"), ("cnn", "train_cnn.py")):
        best = night_dir / studies[kind] / "best.yaml"
        stages.append((f"{kind}_tuned", [script, "-c", str(best), *run, *(weights if kind == "cnn" else [])]))
    return [(model, [*command, "--experiment", f"{tag}/{model}"]) for model, command in stages]


def blended_models(settings: NightSettings, night_dir: Path, name: str, weights: list[str]) -> list[str]:
    """Every model of the night's blend: the default pipeline's four, then the night's."""
    return [*DEFAULT_MODELS, *(m for m, _ in night_models(settings, settings.data_dir, night_dir, name, 0, weights))]


def fixed_stages(settings: NightSettings, data_dir: Path, night_dir: Path, name: str, encoder: dict) -> list[dict]:
    """Every stage that is not a study, in order: {name, kind, command | action}."""
    pipeline = pipeline_settings(settings, night_dir, encoder_on=False)  # the default four run as pipeline.py runs them
    weights = night_weights(settings, night_dir, name, encoder["on"])
    out = []
    for seed in [settings.select_seed, *settings.bag_seeds]:
        out.append({"name": f"s{seed}/prepare", "kind": "prepare",
                    "command": model_stages(data_dir, name, seed, pipeline)[0][1]})
    if encoder["on"]:
        encoder_pipeline = pipeline_settings(settings, night_dir, encoder_on=True)  # its pretraining preset
        stage = pretrain_stage(data_dir, name, encoder_pipeline)[1] + ["--epochs", str(encoder["epochs"]), "--scope",
                                                                      settings.encoder_scope,
                                                                      *shipped_weights(settings), "--no-progress"]
        out.append({"name": "encoder", "kind": "pretrain", "command": stage})
    out.append({"name": "studies", "kind": "studies"})
    models = blended_models(settings, night_dir, name, weights)
    for seed in settings.bag_seeds:
        default = model_stages(data_dir, name, seed, pipeline)[1:]  # never on tonight's encoder
        for model, command in [*default, *night_models(settings, data_dir, night_dir, name, seed, weights)]:
            out.append({"name": f"s{seed}/{model}", "kind": model, "command": command})
        tag = f"{name}_s{seed}"
        # the default pipeline's blend as pipeline.py makes it (its fusion), against the night's Optuna blend
        for blend, members, fusion in (("ensemble_default", list(DEFAULT_MODELS), DEFAULT_FUSION),
                                       ("ensemble_night", models, "study")):
            out.append({"name": f"s{seed}/{blend}", "kind": "ensemble", "n_models": len(members),
                        "command": ensemble_command(night_dir, tag, members, blend, settings.ensemble_trials,
                                                    fusion=fusion)})
    tag = final_tag(name, settings.bag_seeds)
    if len(settings.bag_seeds) > 1:
        out.append({"name": "bag", "kind": "bag", "models": models})
    for stage, command in blend_stages(data_dir, tag, pipeline, tuple(models)):
        out.append({"name": f"final/{stage}", "kind": stage, "command": command, "n_models": len(models)})
        if stage == "ensemble":  # run instead when the night did not win: the default four's blend, bagged likewise
            out[-1]["unless_won"] = ensemble_command(night_dir, tag, list(DEFAULT_MODELS), "ensemble",
                                                     settings.ensemble_trials, fusion=DEFAULT_FUSION)
    return out


def final_tag(name: str, seeds: list[int]) -> str:
    """The runs of the final blend: the bag of the seeds' models, or the one seed's."""
    return f"{name}_bag{'-'.join(map(str, seeds))}" if len(seeds) > 1 else f"{name}_s{seeds[0]}"
