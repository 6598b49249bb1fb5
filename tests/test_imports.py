"""Light imports: every script, run as a real process, answers a bad option with one line and exit 2 and answers
``--help``, without importing torch, timm, albumentations, optuna, OpenCV, scikit-learn or matplotlib; the
clinical stage trains without ever importing torch (issue 20: a typo at 2 a.m. costs well under a second)."""
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, cohort_rows, make_2024

SCRIPTS = ("prepare_data.py", "train_clinical.py", "train_cnn.py", "pretrain_cnn.py", "ensemble.py", "report.py",
           "make_submission.py", "predict.py", "pipeline.py", "overnight.py")
HEAVY = ("torch", "timm", "albumentations", "optuna", "cv2", "sklearn", "matplotlib")
PROBE = """
import contextlib, io, json, runpy, sys
sys.path.insert(0, {repo!r})
def run(argv):
    sys.argv, err = [{script!r}, *argv], io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path({script!r}, run_name="__main__")
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return 0, err.getvalue()
bad, helped = run(["--no-such-option"]), run(["--help"])
print(json.dumps({{"bad": bad, "help": helped[0], "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def probe(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_option_is_one_line_and_help_works_without_heavy_imports(script):
    result = probe(PROBE.format(repo=str(REPO), script=script, heavy=HEAVY))
    code, err = result["bad"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help)" in lines[0], err
    assert "Traceback" not in err
    assert result["help"] == 0
    assert result["heavy"] == [], f"{script} imports {result['heavy']} before it has checked its options"


CLINICAL = """
import json, sys
sys.path.insert(0, {repo!r})
import train_clinical
metrics = train_clinical.main({argv!r})
print(json.dumps({{"auc": metrics["auc_mean"], "torch": "torch" in sys.modules}}))
"""


def test_the_clinical_stage_never_imports_torch(tmp_path):
    train, test = cohort_rows(n_train=20, n_test=3)
    data = make_2024(tmp_path / "data", train=train, test=test, n_cells=1, size=16)
    argv = ["--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--folds-dir", str(tmp_path / "folds"),
            "--cache-dir", str(tmp_path / "cache"), "--n-folds", "3", "--experiment", "clin"]
    result = probe(CLINICAL.format(repo=str(REPO), argv=argv))
    assert result["auc"] > 0.5 and result["torch"] is False
