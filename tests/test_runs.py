"""Run directories: never overwritten, and each run's log.txt holds only its own records."""
import logging

import pytest

from lib.errors import DataError
from lib.runs import create_run


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
    with pytest.raises(DataError, match=r"cannot resume with different settings \(seed\)"):
        create_run(tmp_path / "a", {"seed": 1}, resume=True)
