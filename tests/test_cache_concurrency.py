"""Two processes on one cold cache (two terminals, two workers of a study): the first builds, the second waits
for it and reuses the result; both finish with the same bytes, nothing is built twice, no temporary is left."""
import subprocess
import sys

import numpy as np
from conftest import REPO, cohort_rows, make_2024

SLOW_BUILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
import lib.data.images as images
from lib.data.dataset import load_dataset
read = images.read_image
images.read_image = lambda path: (time.sleep(0.02), read(path))[1]   # a build long enough to overlap
cache = images.load_image_cache(load_dataset(sys.argv[1]), 24, sys.argv[2], workers=1, progress=False)
print("sum", int(cache.array.sum()))
"""


def test_two_processes_on_one_cold_image_cache_build_it_once(tmp_path):
    train, test = cohort_rows(n_train=10, n_test=2)
    data = make_2024(tmp_path / "data", train=train, test=test, n_cells=4, size=32)  # 48 cells: ~1 s to build
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", SLOW_BUILD, str(data), str(cache)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]  # the same pixels seen by both
    logs = outputs[0][1] + outputs[1][1]
    assert logs.count("wrote decoded cache") == 1, logs  # built once, by whichever got the lock
    assert "another process is building it" in logs, logs
    arrays = sorted(cache.glob("*.u8"))
    assert len(arrays) == 1 and not list(cache.rglob("*.tmp"))
    assert np.fromfile(arrays[0], dtype=np.uint8).sum() == int(outputs[0][0].split()[1])
