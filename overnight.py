"""Spend a time budget (a night) on a better submission, resumably, and say whether it paid.

  python overnight.py --data-dir ../shared/data/lymphocytosis --budget 8h

Before any work it measures this machine (a few seconds of embedding and pretraining throughput) and prints the
plan: each stage, its estimate and the finish time. Then, in runs/<dataset>_night/:
  1. the label-free encoder (pretrain_cnn.py), its epochs sized to its share of the budget, or skipped when it
     does not fit (--encoder auto; on/off force it; --encoder-scope train keeps the test cells out);
  2. the Optuna studies of the clinical/morphometry stage and of the CNN head on the cached embeddings, selected
     on one fold seed (--select-seed), in chunks re-planned from the time left and the measured seconds a trial;
  3. on each of the other fold seeds (--bag-seeds): the default pipeline's four models, and the night's: the
     studies' best settings, an image-only CNN (and the encoder's CNNs); a blend of the default models and one of
     all models per seed (their nested, honest estimates compare the two on folds that chose nothing);
  4. every model bagged over those seeds, the final blend (all models, decided before the night), report,
     submission, and summary.md beside the submission: what ran, time against estimate, the settings chosen, the
     honest estimates beside the default pipeline's, and whether the night won.
Killed at any point, the same command resumes: finished stages have markers (stages/*.json) and are not redone,
the studies and pretraining resume, the plan (plan.json: the deadline, the encoder's epochs) is kept.
With --storage URL (an Optuna RDB, e.g. postgresql://...) several machines share the night's studies; the first
to start runs the other stages, the rest join the studies and stop.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pipeline
from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.core.errors import DataError, raise_first
from lib.core.io import atomic_write_json, read_json
from lib.core.paths import CACHE_DIR, CONFIGS_DIR, FOLDS_DIR, REPO_DIR, RUNS_DIR
from lib.core.storage import check_storage, safe_url
from lib.data.dataset import load_dataset
from lib.data.locate import resolve_data_dir
from lib.night import markers, plan
from lib.night.summary import write_summary

PATHS = ("data_dir", "out", "runs_dir", "folds_dir", "cache_dir", "cnn_config", "ssl_cnn_config", "pretrain_config")
PLANNED = ("budget", "data_dir", "select_seed", "bag_seeds", "encoder", "encoder_scope", "ensemble_trials",
           "cnn_config", "ssl_cnn_config", "pretrain_config")  # a resumed night must be asked for the same
DEFAULT_MODELS = pipeline.MODELS


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--budget", type=plan.parse_budget, required=True, help="wall time to spend, e.g. 8h, 90m, 1h30m")
    a("--data-dir", type=Path, help="competition directory (default: the embedded demo data)")
    a("--out", type=Path, default=REPO_DIR / "submission.csv", help="submission; summary.md is written beside it")
    a("--runs-dir", type=Path, default=RUNS_DIR, help="parent of the night's directory <dataset>_night/")
    a("--folds-dir", type=Path, default=FOLDS_DIR)
    a("--cache-dir", type=Path, default=CACHE_DIR)
    a("--select-seed", type=int, default=42, help="fold seed the studies select settings on")
    a("--bag-seeds", type=int, nargs="+", default=[43, 44, 45],
      help="fold seeds of the final models (bagged) and of the honest estimates: none may be --select-seed")
    a("--encoder", choices=("auto", "on", "off"), default="auto",
      help="the label-free encoder: auto = learnt when >= 25 epochs fit 40%% of the budget at the measured rate")
    a("--encoder-scope", choices=("all", "train"), default="all",
      help="cells the encoder learns from: all (train + test, no labels) or train only")
    a("--storage", metavar="URL", help="Optuna RDB shared by several machines (default: sqlite in the night dir)")
    a("--ensemble-trials", type=int, default=100, help="Optuna trials of each blend")
    a("--cnn-config", type=Path, default=CONFIGS_DIR / "cnn_cpu.yaml", help="the default CNN preset")
    a("--ssl-cnn-config", type=Path, default=CONFIGS_DIR / "cnn_cpu_ssl.yaml", help="CNN preset on the encoder")
    a("--pretrain-config", type=Path, default=CONFIGS_DIR / "pretrain_cpu.yaml", help="the encoder's preset")
    a("--plan-only", action="store_true", help="measure, print the plan and stop")
    args = parser.parse_args(argv)
    bag = args.bag_seeds
    raise_first([(min([args.select_seed, *bag]) < 0, "fold seeds must be >= 0"),
                 (len(set(bag)) != len(bag), f"--bag-seeds {bag}: a seed given twice"),
                 (args.select_seed in bag, f"--bag-seeds {bag} include --select-seed {args.select_seed}: the honest "
                  "estimates need fold seeds that chose nothing"),
                 (args.ensemble_trials < 1, f"--ensemble-trials {args.ensemble_trials} must be >= 1")])
    for option in PATHS:
        value = getattr(args, option)
        setattr(args, option, None if value is None else Path(value).expanduser().resolve())
    for option in ("cnn_config", "ssl_cnn_config", "pretrain_config"):
        if not getattr(args, option).is_file():
            raise DataError(f"{getattr(args, option)}: --{option.replace('_', '-')} not found")
    check_storage(args.storage)
    return args


# ----------------------------------------------------------------------------- stage commands
def stage_args(args: argparse.Namespace, night_dir: Path, encoder_on: bool) -> argparse.Namespace:
    """pipeline.py's settings for its stage builders, inside the night directory."""
    return argparse.Namespace(runs_dir=night_dir, folds_dir=args.folds_dir, cache_dir=args.cache_dir,
                              cnn_config=args.cnn_config, pretrain_config=args.pretrain_config if encoder_on else None,
                              with_finetune=None, trials=args.ensemble_trials, fusion="study", out=args.out)


def study_names(name: str) -> dict[str, str]:
    """The night's study names (unique in a shared storage)."""
    return {"clinical": f"{name}_clinical_study", "cnn": f"{name}_cnn_study"}


def common(args, data_dir: Path, night_dir: Path, seed: int) -> list[str]:
    """pipeline.py's options of a training stage on one fold seed, in the night directory."""
    return pipeline.run_options(data_dir, seed, stage_args(args, night_dir, encoder_on=False))


def study_command(kind: str, args, data_dir: Path, night_dir: Path, name: str, weights: list[str]) -> list[str]:
    """The study's command without --trials (added per chunk)."""
    storage = ["--storage", args.storage] if args.storage else []
    base = common(args, data_dir, night_dir, args.select_seed) + ["--study", study_names(name)[kind], *storage]
    if kind == "clinical":
        return ["train_clinical.py", *base]
    config = args.ssl_cnn_config if weights else args.cnn_config
    return ["train_cnn.py", "-c", str(config), *base, *weights, "--no-progress"]


def night_models(args, data_dir: Path, night_dir: Path, name: str, seed: int, weights: list[str]) -> list[tuple[str, list[str]]]:
    """The night's extra models on one fold seed: the studies' best, image-only, the encoder's CNNs."""
    tag, run = f"{name}_s{seed}", common(args, data_dir, night_dir, seed) + ["--resume"]
    cnn_config = str(args.ssl_cnn_config if weights else args.cnn_config)
    stages = [("cnn_image", ["train_cnn.py", "-c", cnn_config, *run, *weights, "--no-clinical-fusion"])]
    if weights:
        stages += [("cnn_ssl", ["train_cnn.py", "-c", cnn_config, *run, *weights]),
                   ("cnn_ssl_attention", ["train_cnn.py", "-c", cnn_config, *run, *weights, "--head", "attention"])]
    studies = study_names(name)
    for kind, script in (("clinical", "train_clinical.py"), ("cnn", "train_cnn.py")):
        best = night_dir / studies[kind] / "best.yaml"
        stages.append((f"{kind}_tuned", [script, "-c", str(best), *run, *(weights if kind == "cnn" else [])]))
    return [(model, [*command, "--experiment", f"{tag}/{model}"]) for model, command in stages]


def blended_models(args, night_dir: Path, name: str, weights: list[str]) -> list[str]:
    """Every model of the night's blend: the default pipeline's four, then the night's."""
    return [*DEFAULT_MODELS, *(m for m, _ in night_models(args, args.data_dir, night_dir, name, 0, weights))]


def fixed_stages(args, data_dir: Path, night_dir: Path, name: str, encoder: dict) -> list[dict]:
    """Every stage that is not a study, in order: {name, kind, command | action}."""
    ns = stage_args(args, night_dir, encoder["on"])
    weights = pipeline.encoder_weights(name, ns)
    out = []
    for seed in [args.select_seed, *args.bag_seeds]:
        out.append({"name": f"s{seed}/prepare", "kind": "prepare", "command": pipeline.model_stages(data_dir, name, seed, ns)[0][1]})
    if encoder["on"]:
        stage = pipeline.pretrain_stage(data_dir, name, ns)[1] + ["--epochs", str(encoder["epochs"]), "--scope",
                                                                 args.encoder_scope, "--no-progress"]
        out.append({"name": "encoder", "kind": "pretrain", "command": stage})
    out.append({"name": "studies", "kind": "studies"})
    models = blended_models(args, night_dir, name, weights)
    for seed in args.bag_seeds:
        default = [(m, c) for m, c in pipeline.model_stages(data_dir, name, seed, ns)[1:]]
        for model, command in [*default, *night_models(args, data_dir, night_dir, name, seed, weights)]:
            out.append({"name": f"s{seed}/{model}", "kind": model, "command": command})
        tag = f"{name}_s{seed}"
        for blend, members in (("ensemble_default", list(DEFAULT_MODELS)), ("ensemble_night", models)):
            out.append({"name": f"s{seed}/{blend}", "kind": "ensemble", "n_models": len(members),
                        "command": pipeline.ensemble_command(night_dir, tag, members, blend, args.ensemble_trials,
                                                             fusion="study")})
    tag = final_tag(name, args.bag_seeds)
    if len(args.bag_seeds) > 1:
        out.append({"name": "bag", "kind": "bag", "models": models})
    for stage, command in pipeline.blend_stages(data_dir, tag, ns, tuple(models)):
        out.append({"name": f"final/{stage}", "kind": stage, "command": command, "n_models": len(models)})
    return out


def final_tag(name: str, seeds: list[int]) -> str:
    return f"{name}_bag{'-'.join(map(str, seeds))}" if len(seeds) > 1 else f"{name}_s{seeds[0]}"


# ----------------------------------------------------------------------------- the plan
def make_plan(args, dataset, night_dir: Path, probe: dict) -> dict:
    """The frozen plan of a new night: deadline, encoder decision, every fixed stage's estimate."""
    n_cells = int(dataset.patients["n_images"].sum())
    scope_cells = n_cells if args.encoder_scope == "all" else int(dataset.train["n_images"].sum())
    encoder = plan.encoder_decision(args.encoder, args.budget, scope_cells, probe)
    stages = fixed_stages(args, dataset.root, night_dir, dataset.name, encoder)
    estimates = plan.fixed_estimates([(s["name"], s["kind"], s.get("n_models", 0)) for s in stages
                                      if s["kind"] != "studies"], n_cells, probe, encoder, args.ensemble_trials,
                                     plan.cold_caches(args.cache_dir, dataset.name))
    now = time.time()
    return {"dataset": dataset.name, "started": now, "deadline": now + args.budget, "probe": probe,
            "n_cells": n_cells, "encoder": encoder, "estimates": estimates,
            "trial_estimates": {k: plan.COSTS_S[f"{k}_trial"] * plan.scale(probe) for k in ("clinical", "cnn")},
            "settings": planned_settings(args)}


def planned_settings(args) -> dict:
    """The options that shaped the plan, as plan.json keeps them (paths as text)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k in PLANNED}


def load_or_make_plan(args, dataset, night_dir: Path, measure) -> dict:
    """plan.json of this night (kept on resume, refused when the command asks for another night)."""
    path = night_dir / "plan.json"
    if path.is_file():
        saved = read_json(path)
        asked = planned_settings(args)
        changed = sorted(k for k in PLANNED if saved["settings"].get(k) != asked.get(k))
        if changed:
            raise DataError(f"{path}: this night was planned with other settings ({', '.join(changed)}); use the "
                            f"same ones to resume, or another --runs-dir for a new night")
        print(f"overnight: resuming the night planned at {time.ctime(saved['started'])} "
              f"(deadline {time.ctime(saved['deadline'])})", flush=True)
        return saved
    print("overnight: measuring this machine ...", flush=True)
    new = make_plan(args, dataset, night_dir, measure())
    if not args.plan_only:
        atomic_write_json(new, path)
    return new


def plan_lines(night: dict, stages: list[dict]) -> list[str]:
    """The printed plan: the machine, the encoder decision, each stage with its estimate and finish time."""
    p, est = night["probe"], night["estimates"]
    fixed = sum(est.values())
    studies = max(0.0, night["deadline"] - night["started"] - fixed)
    lines = [f"machine: {p['cpu']}, {p['cores']} cores, native bf16 {p['native_bf16']}: embedding "
             f"{p['embed_img_s']:.0f} img/s, pretraining {p['pretrain_img_s']:.0f} cells/s (probe {p['probe_s']:.0f} s)",
             f"encoder: {night['encoder']['reason']}",
             f"budget {plan.fmt_duration(night['deadline'] - night['started'])}: fixed stages "
             f"{plan.fmt_duration(fixed)}, studies {plan.fmt_duration(studies)}"]
    clock = night["started"]
    for stage in stages:
        seconds = studies if stage["kind"] == "studies" else est[stage["name"]]
        clock += seconds
        lines.append(f"  {stage['name']:<28} {plan.fmt_duration(seconds):>8}  until {time.strftime('%H:%M', time.localtime(clock))}")
    if fixed > night["deadline"] - night["started"]:
        lines.append(f"warning: the fixed stages alone need {plan.fmt_duration(fixed)}, more than the budget: "
                     "the studies get one trial each and the night ends late")
    return lines


# ----------------------------------------------------------------------------- running
class Night:
    """One night's run: its directory, plan and markers, and the stage runner (a process per stage)."""

    def __init__(self, args, dataset, night_dir: Path, night: dict, stages: list[dict], runner):
        self.args, self.dataset, self.dir, self.plan, self.stages, self.runner = args, dataset, night_dir, night, stages, runner

    def drift(self) -> float:
        return plan.drift([r for r in markers.all_finished(self.dir).values() if r.get("estimate")])

    def fixed_left(self) -> float:
        done = markers.all_finished(self.dir)
        return sum(v for k, v in self.plan["estimates"].items() if k not in done)

    def run(self, stage: dict) -> None:
        """One fixed stage, unless its marker says it finished."""
        if markers.finished(self.dir, stage["name"]):
            print(f"=== {stage['name']}: done earlier, kept", flush=True)
            return
        estimate = self.plan["estimates"].get(stage["name"])
        print(f"\n=== {stage['name']} (estimate {plan.fmt_duration(estimate or 0)}; night elapsed "
              f"{plan.fmt_duration(time.time() - self.plan['started'])}, left "
              f"{plan.fmt_duration(self.plan['deadline'] - time.time())})", flush=True)
        began, seconds = time.perf_counter(), {}
        if stage["kind"] == "bag":
            self.bag(stage["models"])
        else:
            pipeline.run_stage(stage["name"], stage["command"], seconds, self.runner)
        markers.mark_finished(self.dir, stage["name"], time.perf_counter() - began, estimate)

    def bag(self, models: list[str]) -> None:
        pipeline.bag_models(self.dataset.name, self.args.bag_seeds, stage_args(self.args, self.dir, False), {}, models)

    def studies(self, kinds: tuple[str, ...] = ("clinical", "cnn")) -> None:
        """The studies, chunk by chunk, within the time the fixed stages leave; the clinical one first (capped)."""
        if markers.finished(self.dir, "studies"):
            print("=== studies: done earlier, kept", flush=True)
            return
        weights = pipeline.encoder_weights(self.dataset.name, stage_args(self.args, self.dir, self.plan["encoder"]["on"]))
        notes, began = {}, time.perf_counter()
        window = plan.study_window(time.time(), self.plan["deadline"], self.fixed_left(), self.drift())
        for kind, cap in ((k, plan.CLINICAL_STUDY_CAP if k == "clinical" else plan.CNN_STUDY_CAP) for k in kinds):
            share = plan.CLINICAL_STUDY_SHARE if kind == "clinical" else 1.0
            command = study_command(kind, self.args, self.dataset.root, self.dir, self.dataset.name, weights)
            notes[kind] = self.study_chunks(kind, command, cap, share)
        # not a fixed stage (no estimate: the drift is measured on those); its time is what was left for it
        markers.mark_finished(self.dir, "studies", time.perf_counter() - began, None, window=window, notes=notes)

    def study_chunks(self, kind: str, command: list[str], cap: int, share: float) -> str:
        """Run chunks of trials until the study's time, its cap, or its gain runs out; why it stopped."""
        name = study_names(self.dataset.name)[kind]
        summary_path = self.dir / name / "study_summary.json"
        per_trial = self.plan["trial_estimates"][kind]
        started = time.time()
        window = plan.study_window(started, self.plan["deadline"], self.fixed_left(), self.drift()) * share
        while True:
            done = read_json(summary_path)["finished"] if summary_path.is_file() else 0
            left = window - (time.time() - started)
            target = plan.next_chunk(done, cap, left, per_trial, self.args.budget) or (1 if done == 0 else 0)
            if not target:
                return (f"stopped at {done} trials: the space's cap of {cap}" if done >= cap else
                        f"stopped at {done} trials: its time ({plan.fmt_duration(window)}) is spent")
            trials_csv = self.dir / name / "trials.csv"
            plateau = plan.plateaued(trials_csv) if trials_csv.is_file() else None
            if plateau:
                return f"stopped at {done} trials: {plateau}"
            began = time.perf_counter()
            pipeline.run_stage(f"{kind} study to {target} trials", [*command, "--trials", str(target)], {}, self.runner)
            new = read_json(summary_path)["finished"]
            if new > done:
                per_trial = (time.perf_counter() - began) / (new - done)

    def final(self) -> None:
        for stage in self.stages:
            if stage["kind"] == "studies":
                self.studies()
            elif stage["kind"] != "prepare":
                self.run(stage)


def main(argv=None, runner: pipeline.Runner = pipeline.run_child, measure=None) -> Path | None:
    """Plan and run the night (``measure``: the machine probe, lib.night.probe.probe by default); return the summary."""
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    dataset = load_dataset(data_dir)
    args.data_dir = dataset.root
    night_dir = args.runs_dir / f"{dataset.name}_night"
    if measure is None:
        from lib.night.probe import probe as measure  # torch, timm: after the command line and the data are checked
    night = load_or_make_plan(args, dataset, night_dir, measure)
    stages = fixed_stages(args, dataset.root, night_dir, dataset.name, night["encoder"])
    print("\n".join(plan_lines(night, stages)), flush=True)
    if args.plan_only:
        return None
    run = Night(args, dataset, night_dir, night, stages, runner)
    for stage in (s for s in stages if s["kind"] == "prepare"):
        run.run(stage)
    me = markers.owner_name(night_dir)
    owner = markers.claim(args.storage, night["dataset"] + "_night", me) if args.storage else me
    if owner != me:
        join(run, owner, night["encoder"]["on"], args.storage)
        return None
    run.final()
    weights = pipeline.encoder_weights(dataset.name, stage_args(args, night_dir, night["encoder"]["on"]))
    models = blended_models(args, night_dir, dataset.name, weights)
    summary = write_summary(night_dir, night, stages, args, study_names(dataset.name), models,
                            night_dir / final_tag(dataset.name, args.bag_seeds))
    print(summary.read_text())
    return summary


def join(run: Night, owner: str, encoder_on: bool, storage: str) -> None:
    """Another machine owns the night: work as a worker of its studies, then stop. Its CNN study embeds with its own
    encoder, which this machine does not have: with the encoder on, only the clinical study is joined."""
    run.studies(("clinical",) if encoder_on else ("clinical", "cnn"))
    print(f"overnight: {owner} owns this night (storage {safe_url(storage)}) and runs its other stages; this "
          f"machine's share of the studies is done" + (" (the CNN study needs the owner's encoder)" if encoder_on else ""))


if __name__ == "__main__":
    run_main(main)
