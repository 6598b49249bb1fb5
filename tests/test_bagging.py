"""Fold-seed bagging: the bagged run averages exactly the right predictions and refuses incompatible runs."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib.core.errors import DataError
from lib.fusion.runs import load_runs
from lib.stages.bagging import bag_runs

IDS, TARGET = ["A", "B", "C", "D"], [1, 0, 1, 0]


def write_run(path: Path, seed: int, folds, oof, test_folds: dict[str, list[float]], **config) -> Path:
    path.mkdir(parents=True)
    pd.DataFrame({"ID": IDS, "fold": folds, "target": TARGET, "proba": oof}).to_csv(path / "oof.csv", index=False)
    test = pd.DataFrame({"ID": ["T1", "T2"], **test_folds})
    test.assign(proba=test.filter(like="fold_").mean(axis=1)).to_csv(path / "test.csv", index=False)
    settings = {"dataset_name": "toy-1", "stage": "clinical", "feature_set": "clinical", "fold_seed": seed,
                "experiment": path.name, **config}
    (path / "config.yaml").write_text(yaml.safe_dump(settings))
    return path


def test_bagged_predictions_are_the_hand_computed_means(tmp_path):
    a = write_run(tmp_path / "a", 42, [0, 0, 1, 1], [0.9, 0.2, 0.6, 0.4], {"fold_0": [0.8, 0.1], "fold_1": [0.6, 0.3]})
    b = write_run(tmp_path / "b", 43, [1, 0, 0, 1], [0.7, 0.4, 0.8, 0.0], {"fold_0": [0.4, 0.5], "fold_1": [1.0, 0.1]})
    metrics = bag_runs([a, b], tmp_path / "bag")
    oof = pd.read_csv(tmp_path / "bag" / "oof.csv").set_index("ID")
    assert oof["proba"].tolist() == pytest.approx([0.8, 0.3, 0.7, 0.2])
    assert oof["fold"].tolist() == [0, 0, 1, 1] and oof["target"].tolist() == TARGET  # the first seed's folds
    test = pd.read_csv(tmp_path / "bag" / "test.csv").set_index("ID")
    assert list(test.columns) == ["s42_fold_0", "s42_fold_1", "s43_fold_0", "s43_fold_1", "proba"]
    assert test["proba"].tolist() == pytest.approx([(0.8 + 0.6 + 0.4 + 1.0) / 4, (0.1 + 0.3 + 0.5 + 0.1) / 4])
    assert metrics["pooled_ba"] == 1.0
    config = yaml.safe_load((tmp_path / "bag" / "config.yaml").read_text())
    assert config["fold_seeds"] == [42, 43] and len(config["bagged_from"]) == 2
    assert load_runs([tmp_path / "bag"]).names == ["bag"]  # an ordinary run for the ensemble


@pytest.mark.parametrize("change, message", [
    (dict(seed=42), "fold seeds .* repeat"),
    (dict(feature_set="clinical+ncells"), "settings differ .*feature_set"),
    (dict(dataset_name="other-2"), "settings differ .*dataset_name"),
])
def test_incompatible_runs_are_refused(tmp_path, change, message):
    a = write_run(tmp_path / "a", 42, [0, 0, 1, 1], [0.5] * 4, {"fold_0": [0.5, 0.5]})
    seed = change.pop("seed", 43)
    b = write_run(tmp_path / "b", seed, [1, 0, 0, 1], [0.5] * 4, {"fold_0": [0.5, 0.5]}, **change)
    with pytest.raises(DataError, match=message):
        bag_runs([a, b], tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_runs_whose_patients_differ_are_refused(tmp_path):
    a = write_run(tmp_path / "a", 42, [0, 0, 1, 1], [0.5] * 4, {"fold_0": [0.5, 0.5]})
    b = write_run(tmp_path / "b", 43, [1, 0, 0, 1], [0.5] * 4, {"fold_0": [0.5, 0.5]})
    oof = pd.read_csv(b / "oof.csv")
    oof.loc[3, "ID"] = "E"
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(DataError, match="OOF patients or targets differ"):
        bag_runs([a, b], tmp_path / "bag")
