"""Running a night: its plan made (the machine measured) or resumed from plan.json, printed, then every stage run
once (finished-stage markers), the studies in chunks re-planned from the time left, and summary.md written;
``run_night`` is overnight.py's body. A machine that does not own a shared night only joins its studies."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from lib.core.errors import DataError
from lib.core.io import atomic_write_json, read_json
from lib.core.storage import safe_url
from lib.data.dataset import load_dataset
from lib.data.locate import resolve_data_dir
from lib.night import markers, plan
from lib.night.commands import (
    blended_models,
    final_tag,
    fixed_stages,
    night_weights,
    pipeline_settings,
    study_command,
    study_names,
)
from lib.night.settings import PLANNED, PLANNED_BEFORE, NightSettings, planned_settings
from lib.night.summary import night_won, write_summary
from lib.pipeline.run import Runner, bag_models, run_child, run_stage


# ----------------------------------------------------------------------------- the plan
def make_plan(settings: NightSettings, dataset, night_dir: Path, probe: dict) -> dict:
    """The frozen plan of a new night: deadline, encoder decision, every fixed stage's estimate."""
    n_cells = int(dataset.patients["n_images"].sum())
    scope_cells = n_cells if settings.encoder_scope == "all" else int(dataset.train["n_images"].sum())
    encoder = plan.encoder_decision(settings.encoder, settings.budget, scope_cells, probe,
                                    continued=settings.encoder_init != "none")
    stages = fixed_stages(settings, dataset.root, night_dir, dataset.name, encoder)
    estimates = plan.fixed_estimates([(s["name"], s["kind"], s.get("n_models", 0)) for s in stages
                                      if s["kind"] != "studies"], n_cells, probe, encoder, settings.ensemble_trials,
                                     plan.cold_caches(settings.cache_dir, dataset.name))
    now = time.time()
    return {"dataset": dataset.name, "started": now, "deadline": now + settings.budget, "probe": probe,
            "n_cells": n_cells, "encoder": encoder, "estimates": estimates,
            "trial_estimates": {k: plan.COSTS_S[f"{k}_trial"] * plan.scale(probe) for k in ("clinical", "cnn")},
            "settings": planned_settings(settings)}


def load_or_make_plan(settings: NightSettings, dataset, night_dir: Path, measure) -> dict:
    """plan.json of this night (kept on resume, refused when the command asks for another night)."""
    path = night_dir / "plan.json"
    if path.is_file():
        saved = read_json(path)
        asked = planned_settings(settings)
        changed = sorted(k for k in PLANNED if saved["settings"].get(k, PLANNED_BEFORE.get(k)) != asked.get(k))
        if changed:
            raise DataError(f"{path}: this night was planned with other settings ({', '.join(changed)}); use the "
                            f"same ones to resume, or another --runs-dir for a new night")
        print(f"overnight: resuming the night planned at {time.ctime(saved['started'])} "
              f"(deadline {time.ctime(saved['deadline'])})", flush=True)
        return saved
    print("overnight: measuring this machine ...", flush=True)
    new = make_plan(settings, dataset, night_dir, measure())
    if not settings.plan_only:
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
    """One night's run: its settings, directory, plan and markers, and the stage runner (a process per stage)."""

    def __init__(self, settings: NightSettings, dataset, night_dir: Path, night: dict, stages: list[dict],
                 runner: Runner):
        self.settings, self.dataset, self.dir, self.plan = settings, dataset, night_dir, night
        self.stages, self.runner = stages, runner

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
        began, seconds, command, extra = time.perf_counter(), {}, stage.get("command"), {}
        if "unless_won" in stage:
            extra["submitted"] = "night" if night_won(self.dir, self.dataset.name, self.settings.bag_seeds) else "default"
            command = stage["command"] if extra["submitted"] == "night" else stage["unless_won"]
            print(f"=== {stage['name']}: the {extra['submitted']} blend (the night "
                  f"{'won' if extra['submitted'] == 'night' else 'did not win'})", flush=True)
        if stage["kind"] == "bag":
            self.bag(stage["models"])
        else:
            run_stage(stage["name"], command, seconds, self.runner)
        markers.mark_finished(self.dir, stage["name"], time.perf_counter() - began, estimate, **extra)

    def bag(self, models: list[str]) -> None:
        bag_models(self.dataset.name, self.settings.bag_seeds, pipeline_settings(self.settings, self.dir, False), {},
                   models)

    def studies(self, kinds: tuple[str, ...] = ("clinical", "cnn")) -> None:
        """The studies, chunk by chunk, within the time the fixed stages leave; the clinical one first (capped)."""
        if markers.finished(self.dir, "studies"):
            print("=== studies: done earlier, kept", flush=True)
            return
        weights = night_weights(self.settings, self.dir, self.dataset.name, self.plan["encoder"]["on"])
        notes, began = {}, time.perf_counter()
        window = plan.study_window(time.time(), self.plan["deadline"], self.fixed_left(), self.drift())
        for kind, cap in ((k, plan.CLINICAL_STUDY_CAP if k == "clinical" else plan.CNN_STUDY_CAP) for k in kinds):
            share = plan.CLINICAL_STUDY_SHARE if kind == "clinical" else 1.0
            command = study_command(kind, self.settings, self.dataset.root, self.dir, self.dataset.name, weights)
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
            target = plan.next_chunk(done, cap, left, per_trial, self.settings.budget) or (1 if done == 0 else 0)
            if not target:
                return (f"stopped at {done} trials: the space's cap of {cap}" if done >= cap else
                        f"stopped at {done} trials: its time ({plan.fmt_duration(window)}) is spent")
            trials_csv = self.dir / name / "trials.csv"
            plateau = plan.plateaued(trials_csv) if trials_csv.is_file() else None
            if plateau:
                return f"stopped at {done} trials: {plateau}"
            began = time.perf_counter()
            run_stage(f"{kind} study to {target} trials", [*command, "--trials", str(target)], {}, self.runner)
            new = read_json(summary_path)["finished"]
            if new > done:
                per_trial = (time.perf_counter() - began) / (new - done)

    def final(self) -> None:
        for stage in self.stages:
            if stage["kind"] == "studies":
                self.studies()
            elif stage["kind"] != "prepare":
                self.run(stage)


def run_night(settings: NightSettings, runner: Runner = run_child, measure=None) -> Path | None:
    """Plan and run the night (``measure``: the machine probe, lib.night.probe.probe by default); return the summary
    (None with ``plan_only``, or on a machine that only joined another's studies)."""
    data_dir = resolve_data_dir(settings.data_dir)
    dataset = load_dataset(data_dir)
    settings = replace(settings, data_dir=dataset.root)
    night_dir = settings.runs_dir / f"{dataset.name}_night"
    if measure is None:
        from lib.night.probe import probe as measure  # torch, timm: after the command line and the data are checked
    night = load_or_make_plan(settings, dataset, night_dir, measure)
    stages = fixed_stages(settings, dataset.root, night_dir, dataset.name, night["encoder"])
    print("\n".join(plan_lines(night, stages)), flush=True)
    if settings.plan_only:
        return None
    run = Night(settings, dataset, night_dir, night, stages, runner)
    for stage in (s for s in stages if s["kind"] == "prepare"):
        run.run(stage)
    me = markers.owner_name(night_dir)
    owner = markers.claim(settings.storage, night["dataset"] + "_night", me) if settings.storage else me
    if owner != me:
        join(run, owner, night["encoder"]["on"], settings.storage)
        return None
    run.final()
    weights = night_weights(settings, night_dir, dataset.name, night["encoder"]["on"])
    models = blended_models(settings, night_dir, dataset.name, weights)
    summary = write_summary(night_dir, night, stages, settings, studies=study_names(dataset.name), models=models,
                            final_dir=night_dir / final_tag(dataset.name, settings.bag_seeds))
    print(summary.read_text())
    return summary


def join(run: Night, owner: str, encoder_on: bool, storage: str) -> None:
    """Another machine owns the night: work as a worker of its studies, then stop. Its CNN study embeds with its own
    encoder, which this machine does not have: with the encoder on, only the clinical study is joined."""
    run.studies(("clinical",) if encoder_on else ("clinical", "cnn"))
    print(f"overnight: {owner} owns this night (storage {safe_url(storage)}) and runs its other stages; this "
          f"machine's share of the studies is done" + (" (the CNN study needs the owner's encoder)" if encoder_on else ""))
