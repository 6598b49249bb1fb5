"""overnight.py: the budgeted night on the demo data, killed in the middle and resumed without redoing anything;
its planner's arithmetic; its refusals before any work."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_CNN

import overnight
from lib.core.cli import run_in_process, run_main
from lib.night import plan

PROBE = {"embed_img_s": 60.0, "pretrain_img_s": 50.0, "cpu": "test CPU", "cores": 2, "native_bf16": False,
         "torch_threads": 2, "cuda": None, "probe_s": 0.0}  # the reference machine's rates: estimates as planned


def night_argv(demo_pipeline, root: Path, *extra: str) -> list[str]:
    data, runs, _, _ = demo_pipeline
    # inside the CNN study's space (epochs 10..80, bag sizes 8/16/32/all): its first trial is these settings
    (root / "cnn.yaml").write_text(yaml.safe_dump({**TINY_CNN, "epochs": 10, "bag_size": 8}))
    return ["--data-dir", str(data), "--budget", "1m", "--runs-dir", str(root / "runs"), "--out",
            str(root / "submission.csv"), "--folds-dir", str(runs.parent / "folds"), "--cache-dir",
            str(runs.parent / "cache"), "--bag-seeds", "43", "--ensemble-trials", "4", "--encoder", "off",
            "--encoder-init", "none", "--cnn-config", str(root / "cnn.yaml"), "--ssl-cnn-config", str(root / "cnn.yaml"), *extra]


def experiment_of(command: list[str]) -> str:
    """The run a stage command writes (its --experiment, or its --study)."""
    for option in ("--experiment", "--study"):
        if option in command:
            return command[command.index(option) + 1]
    return command[0]


def test_a_killed_night_resumes_without_redoing_a_finished_stage(demo_pipeline, tmp_path):
    """One bag seed (the two-seed night's stage list, its bag included, is checked below without training)."""
    argv, first, second = night_argv(demo_pipeline, tmp_path), [], []

    def killed_after_the_studies(command):
        if experiment_of(command).endswith("_s43/morpho"):
            return -15  # SIGTERM, as a stage stopped by the scheduler reports it
        first.append(experiment_of(command))
        return run_in_process(command)

    with pytest.raises(SystemExit, match="stopped by SIGTERM"):
        overnight.main(argv, runner=killed_after_the_studies, measure=lambda: PROBE)
    night = next((tmp_path / "runs").glob("*_night"))
    kept = {p.name for p in (night / "stages").glob("*.json")}
    assert {"studies.json", "s43_clinical.json"} <= kept and "s43_morpho.json" not in kept, kept

    def recorded(command):
        second.append(experiment_of(command))
        return run_in_process(command)
    summary = overnight.main(argv, runner=recorded, measure=lambda: pytest.fail("a resumed night measures again"))
    assert second[0].endswith("_s43/morpho") and not set(first) & set(second), set(first) & set(second)
    name = night.name.removesuffix("_night")
    assert f"{name}_clinical_study" in first and f"{name}_cnn_study" in first  # the studies ran, once
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert len(submission) == 4 and set(submission["Predicted"]) <= {0, 1}
    text = summary.read_text()
    assert summary == tmp_path / "summary.md" and (night / "summary.md").read_text() == text
    for expected in ("blend: default pipeline", "blend: night", "clinical_tuned", "cnn_tuned", "cnn_image",
                     "Settings chosen (fold seed 42)", "fold seeds 43", "won" if "**won**" in text else "did not win"):
        assert expected in text, expected
    final = night / f"{name}_s43" / "ensemble"
    params = json.loads((final / "best_params.json").read_text())
    if "**won**" in text:  # the night's blend: the default four, the two tuned ones and the image-only CNN
        assert len(params["runs"]) == 7 and "Submitted: the night's blend" in text
    else:  # the default pipeline's blend is submitted
        assert len(params["runs"]) == 4 and "Submitted: the default pipeline's blend" in text
    assert (final / "report" / "index.html").is_file()
    tuned = yaml.safe_load((night / f"{name}_s43" / "cnn_tuned" / "config.yaml").read_text())
    best = yaml.safe_load((night / f"{name}_cnn_study" / "best.yaml").read_text())
    assert tuned["head"] == best["head"] and tuned["fold_seed"] == 43 and best["fold_seed"] == 42


def test_a_night_on_two_seeds_bags_every_model_before_the_final_blend(demo_pipeline, tmp_path):
    """The stage list of a night with two bag seeds: each seed's models and blends, then the bag of all models, then
    the final blend, report and submission on the bagged runs (lib.pipeline.run.bag_models is tested in test_pipeline)."""
    from lib.data.dataset import load_dataset
    from lib.night.commands import DEFAULT_MODELS, fixed_stages
    args = overnight.parse_args(night_argv(demo_pipeline, tmp_path, "--bag-seeds", "43", "44"))
    dataset = load_dataset(args.data_dir)
    night = tmp_path / "runs" / f"{dataset.name}_night"
    stages = fixed_stages(args, dataset.root, night, dataset.name, {"on": False, "epochs": 0})
    names = [s["name"] for s in stages]
    models = [*DEFAULT_MODELS, "cnn_image", "clinical_tuned", "cnn_tuned"]
    for seed in (43, 44):
        assert [n.split("/")[1] for n in names if n.startswith(f"s{seed}/")] == [
            "prepare", *models, "ensemble_default", "ensemble_night"], names
    assert names[names.index("s44/ensemble_night") + 1:] == ["bag", "final/ensemble", "final/report", "final/submission"]
    bag = stages[names.index("bag")]
    assert bag["models"] == models
    ensemble = stages[names.index("final/ensemble")]["command"]
    assert str(night / f"{dataset.name}_bag43-44" / "cnn_tuned") in ensemble and "--runs" in ensemble
    fallback = " ".join(stages[names.index("final/ensemble")]["unless_won"])  # submitted when the night did not win
    assert "--fusion equal" in fallback and "cnn_tuned" not in fallback
    assert str(night / f"{dataset.name}_bag43-44" / "cnn_attention") in fallback


def test_the_night_wins_only_by_more_than_the_spread_of_its_gains():
    from lib.night.summary import won
    assert won({"ba": [0.90, 0.91, 0.92]}, {"ba": [0.93, 0.94, 0.95]}) is True
    assert won({"ba": [0.90, 0.91, 0.92]}, {"ba": [0.95, 0.91, 0.90]}) is False  # mean gain 0.01, spread 0.03
    assert won({"ba": [0.90]}, {"ba": [0.95]}) is False  # one seed: no spread to beat, the default stays
    assert won({"ba": []}, {"ba": []}) is None


def test_a_night_starts_from_the_shipped_encoder(demo_pipeline, tmp_path):
    """--encoder-init lymph-ssl (the default): continued tonight when the encoder is on, used as it is when off."""
    from lib.data.dataset import load_dataset
    from lib.night.commands import fixed_stages
    argv = night_argv(demo_pipeline, tmp_path)
    argv[argv.index("--encoder-init") + 1] = "lymph-ssl"
    args = overnight.parse_args(argv)
    dataset = load_dataset(args.data_dir)
    night = tmp_path / "runs" / f"{dataset.name}_night"
    off = {s["name"]: s for s in fixed_stages(args, dataset.root, night, dataset.name, {"on": False, "epochs": 0})}
    assert "encoder" not in off and "--weights lymph-ssl" in " ".join(off["s43/cnn_ssl"]["command"])
    on = {s["name"]: s for s in fixed_stages(args, dataset.root, night, dataset.name, {"on": True, "epochs": 10})}
    pretrain = " ".join(on["encoder"]["command"])
    assert "--weights lymph-ssl" in pretrain and "--epochs 10" in pretrain
    assert str(night / f"{dataset.name}_ssl" / "encoder.pth") in " ".join(on["s43/cnn_ssl"]["command"])
    for model in ("cnn", "cnn_attention"):  # the default pipeline's CNNs stay on their own preset's weights
        assert "--weights" not in on[f"s43/{model}"]["command"], on[f"s43/{model}"]["command"]
    slow = {**PROBE, "pretrain_img_s": 50.0}  # 10k cells: 200 s an epoch
    assert plan.encoder_decision("auto", 3 * 3600, 10_000, slow, continued=True)["epochs"] == 21
    assert not plan.encoder_decision("auto", 3 * 3600, 10_000, slow)["on"]  # from scratch: 25 epochs do not fit


def test_the_plan_is_printed_and_nothing_runs(demo_pipeline, tmp_path, capsys):
    argv = night_argv(demo_pipeline, tmp_path, "--plan-only")
    argv[argv.index("off")] = "on"
    assert overnight.main(argv, runner=lambda c: pytest.fail(f"ran {c}"), measure=lambda: PROBE) is None
    out = capsys.readouterr().out
    assert "machine: test CPU" in out and "encoder: --encoder on" in out
    assert re.search(r"encoder\s+\S+\s+until", out) and re.search(r"studies\s+\S+\s+until", out)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["--bag-seeds", "42", "43"], "include --select-seed 42"),
    (["--bag-seeds", "43", "43"], "a seed given twice"),
    (["--budget", "10m20"], "expected a duration like 8h"),
    (["--budget", "30s"], "under 60 s"),
    (["--storage", "mysql://x"], "--storage"),
])
def test_bad_options_are_one_line_before_any_work(demo_pipeline, tmp_path, capsys, extra, message):
    argv = night_argv(demo_pipeline, tmp_path) + extra
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: overnight.main(argv, runner=lambda c: pytest.fail("ran"), measure=lambda: pytest.fail("probed")))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_night_resumed_with_other_settings_is_refused(demo_pipeline, tmp_path, capsys):
    argv = night_argv(demo_pipeline, tmp_path)
    data, _, _, _ = demo_pipeline
    from lib.data.dataset import load_dataset
    night = tmp_path / "runs" / f"{load_dataset(data).name}_night"
    night.mkdir(parents=True)
    (night / "plan.json").write_text(json.dumps({"settings": {"budget": 7200.0}}))
    with pytest.raises(SystemExit):
        run_main(lambda: overnight.main(argv, runner=lambda c: pytest.fail("ran"), measure=lambda: PROBE))
    assert "planned with other settings (" in capsys.readouterr().err


def test_budgets_and_the_planners_arithmetic():
    assert plan.parse_budget("8h") == 8 * 3600 and plan.parse_budget("1h30m") == 5400
    assert plan.parse_budget("90m") == 5400 and plan.parse_budget("2.5h") == 9000
    assert plan.fmt_duration(3900) == "1h05m" and plan.fmt_duration(75) == "1m15s"
    fast = {**PROBE, "embed_img_s": 4 * plan.REFERENCE["embed_img_s"]}  # bf16: embeds 4x faster, heads do not
    assert plan.model_cost("cnn_ssl", plan.scale(fast)) == plan.COSTS_S["cnn"] * plan.WARM_FLOOR
    assert plan.model_cost("cnn", plan.scale(PROBE)) >= plan.COSTS_S["cnn"] * plan.WARM_FLOOR
    slow = {**PROBE, "pretrain_img_s": 10.0}  # 25 epochs of 10,000 cells: ~7 h, more than 40 % of 8 h
    assert not plan.encoder_decision("auto", 8 * 3600, 10_000, slow)["on"]
    fast = plan.encoder_decision("auto", 8 * 3600, 10_000, {**PROBE, "pretrain_img_s": 500.0})
    assert fast["on"] and fast["epochs"] == plan.MAX_ENCODER_EPOCHS  # 40 % of 8 h is 576 epochs: capped
    assert plan.encoder_decision("auto", 3600, 10_000, {**PROBE, "pretrain_img_s": 100.0})["epochs"] == 0
    assert plan.next_chunk(0, 40, 100.0, 10.0, 3600) == 10  # what fits the time left
    assert plan.next_chunk(0, 40, 1e6, 10.0, 3600) == 36  # one chunk: 10 % of the budget
    assert plan.next_chunk(38, 40, 1e6, 10.0, 3600) == 40 and plan.next_chunk(40, 40, 1e6, 1.0, 3600) == 0
    assert plan.next_chunk(5, 40, 5.0, 10.0, 3600) == 0
    assert plan.study_window(0.0, 1000.0, 300.0, 2.0) == 400.0


def test_a_study_stops_when_its_second_half_did_not_improve(tmp_path):
    flat = pd.DataFrame({"state": ["COMPLETE"] * 20, "value": [0.8] * 10 + [0.802] * 10})
    flat.to_csv(tmp_path / "flat.csv", index=False)
    assert "more trials do not pay" in plan.plateaued(tmp_path / "flat.csv")
    rising = flat.assign(value=[0.8] * 10 + [0.85] * 10)
    rising.to_csv(tmp_path / "rising.csv", index=False)
    assert plan.plateaued(tmp_path / "rising.csv") is None
    flat.head(12).to_csv(tmp_path / "few.csv", index=False)
    assert plan.plateaued(tmp_path / "few.csv") is None


def test_the_first_machine_to_claim_a_shared_night_owns_it(tmp_path):
    """With a shared --storage, the claim is the atomic creation of one study: the second machine learns who owns
    the night (and then only joins its studies)."""
    from lib.night.markers import claim
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    assert claim(storage, "demo_night", "host-a:/runs/demo_night") == "host-a:/runs/demo_night"
    assert claim(storage, "demo_night", "host-b:/runs/demo_night") == "host-a:/runs/demo_night"
    assert claim(storage, "other_night", "host-b:/runs/other_night") == "host-b:/runs/other_night"


def test_a_machine_that_does_not_own_the_night_only_works_on_its_studies(demo_pipeline, tmp_path, capsys):
    from lib.core.io import atomic_write_json
    from lib.data.dataset import load_dataset
    from lib.night.markers import claim
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    name = load_dataset(demo_pipeline[0]).name
    claim(storage, f"{name}_night", "host-a:/elsewhere")
    night, ran = tmp_path / "runs" / f"{name}_night", []

    def fake(command):  # a study chunk "finishes" its trials; nothing else may run but the fold files
        ran.append(command[0] if "--study" not in command else command[command.index("--study") + 1])
        if "--study" in command:
            study = command[command.index("--study") + 1]
            atomic_write_json({"finished": int(command[command.index("--trials") + 1])}, night / study / "study_summary.json")
        return 0
    assert overnight.main(night_argv(demo_pipeline, tmp_path, "--storage", storage), runner=fake,
                          measure=lambda: PROBE) is None
    assert set(ran) == {"prepare_data.py", f"{name}_clinical_study", f"{name}_cnn_study"}, ran
    assert "host-a:/elsewhere owns this night" in capsys.readouterr().out
