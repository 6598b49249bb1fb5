"""Run directories: never overwritten, and each run's log.txt holds only its own records."""
import logging
import os
import subprocess
import sys

import pytest

from lib.core.errors import DataError
from lib.core.paths import REPO_DIR
from lib.core.runs import create_run


def test_runs_refuse_overwrite_and_keep_their_logs_apart(tmp_path):
    log = logging.getLogger("lib.test_runs")
    log.setLevel(logging.INFO)
    first = create_run(tmp_path / "a", {"seed": 0})
    log.info("record of run a")
    second = create_run(tmp_path / "b", {"seed": 0})
    log.info("record of run b")
    assert "record of run b" not in (first / "log.txt").read_text()
    assert "record of run b" in (second / "log.txt").read_text()
    with pytest.raises(DataError, match="run already exists"):
        create_run(tmp_path / "a", {"seed": 0})
    with pytest.raises(DataError, match=r"different settings \(seed: 0 then, 1 now\); pass the run's settings \(--seed 0\)"):
        create_run(tmp_path / "a", {"seed": 1}, resume=True)


def test_lymph_cache_dir_moves_every_cache(tmp_path):
    """LYMPH_CACHE_DIR (how bench_pipeline --cold starts from empty caches) sets lib.core.paths.CACHE_DIR."""
    code = "from lib.core.paths import CACHE_DIR, REPO_DIR; print(CACHE_DIR); print(REPO_DIR / 'cache')"
    env = {**os.environ, "LYMPH_CACHE_DIR": str(tmp_path / "c")}
    moved = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_DIR, capture_output=True, text=True)
    assert moved.stdout.split("\n")[0] == str((tmp_path / "c").resolve())
    env.pop("LYMPH_CACHE_DIR")
    default = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_DIR, capture_output=True, text=True)
    first, second = default.stdout.split("\n")[:2]
    assert first == second


def test_a_second_process_on_a_run_directory_is_refused(tmp_path):
    """A run directory is claimed (flock on run_dir/.lock) for the life of the process that created it."""
    code = ("import sys, time; from pathlib import Path; from lib.core.runs import create_run; "
            "create_run(Path(sys.argv[1]), {'seed': 0}); print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a")], cwd=REPO_DIR,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for resume in (False, True):
            with pytest.raises(DataError, match=rf"in use by {holder.pid}@"):
                create_run(tmp_path / "a", {"seed": 0}, resume=resume)
        assert (tmp_path / "a" / ".lock").read_text().startswith(f"{holder.pid}@")
    finally:
        holder.kill()
        holder.wait()
    create_run(tmp_path / "a", {"seed": 0}, resume=True)  # released when its holder died


def test_refused_run_leaves_no_directory_and_deleted_run_is_not_found(tmp_path):
    """A run directory that cannot be created is one line naming it, as any user (root included: a file in the
    way refuses root as a read-only folder refuses a user), and nothing is left behind."""
    from lib.core.runs import read_predictions
    (tmp_path / "afile").write_text("a file where a folder should be\n")
    with pytest.raises(DataError, match="afile/x: cannot create directory"):
        create_run(tmp_path / "afile" / "x", {"seed": 0})
    assert (tmp_path / "afile").is_file()
    with pytest.raises(DataError, match="gone: run directory not found"):
        read_predictions(tmp_path / "gone")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the file-in-the-way case "
                                                "above covers the refused directory as root")
def test_a_read_only_parent_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(DataError, match="ro/x: cannot create directory"):
            create_run(tmp_path / "ro" / "x", {"seed": 0})
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_a_refused_resume_hints_only_real_options_quoted(tmp_path):
    create_run(tmp_path / "c", {"data_dir": "/data/my data", "dataset_name": "d-aaaa", "head_args": None})
    with pytest.raises(DataError) as refused:
        create_run(tmp_path / "c", {"data_dir": "/data/other", "dataset_name": "d-bbbb", "head_args": {"k": 1}},
                   resume=True)
    message = str(refused.value)
    assert "(--data-dir '/data/my data')" in message and "--dataset-name" not in message and "--head-args" not in message
    assert "dataset_name: 'd-aaaa' then, 'd-bbbb' now" in message and "head_args: None then, {'k': 1} now" in message
