"""Benchmark: JPEG decode throughput vs reading the decoded-image cache, on a competition directory; and the cost
of the cells' content digests every cache is keyed on (hashed once, then remembered by file stat).

Usage: python -m benchmarks.bench_decode [--data-dir ../shared/data/lymphocytosis] [--crop 112]
Prints img/s and appends a dated block to BENCHMARKS.md (unless --no-append).
"""
import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import publish
from lib.core.paths import SHARED_DATA_DIR
from lib.data.dataset import load_dataset
from lib.data.digests import content_digests
from lib.data.images import load_image_cache, read_image


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} img/s ({n} images in {seconds:.1f} s)"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--n", type=int, default=3000, help="images for the decode-only measurements")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.data_dir)
    paths = [p for pid in dataset.patients.index for p in dataset.images[pid]]
    sample = paths[:args.n]
    one = timed(lambda: [read_image(p) for p in sample])
    with ThreadPoolExecutor(2) as pool:
        two = timed(lambda: list(pool.map(read_image, sample)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        build = timed(lambda: load_image_cache(dataset, args.crop, cache_dir=tmp, progress=False))
        cache = load_image_cache(dataset, args.crop, cache_dir=tmp, progress=False)
        read = timed(lambda: [np.array(cache.patient(pid)) for pid in dataset.patients.index])
        store = tmp / "digests.csv"
        hashed = timed(lambda: content_digests([str(p) for p in paths], store, progress=False))
        remembered = timed(lambda: content_digests([str(p) for p in paths], store, progress=False))
        reopen = timed(lambda: load_image_cache(dataset, args.crop, cache_dir=tmp, progress=False))
    finally:
        shutil.rmtree(tmp)
    lines = [f"- dataset: {dataset.name}, {len(paths)} images (224x224 JPEG)",
             f"- decode + centre crop, cv2, 1 thread: {rate(len(sample), one)}",
             f"- decode + centre crop, cv2, 2 threads: {rate(len(sample), two)}",
             f"- build decoded cache (crop {args.crop}, 2 threads, includes decode): {rate(len(paths), build)}",
             f"- read every bag from the cache (crop {args.crop}, warm page cache): {rate(len(paths), read)}",
             f"- content digests (SHA-1 of every file, 2 threads, warm page cache; what a copied or touched data directory costs): "
             f"{rate(len(paths), hashed)}",
             f"- content digests remembered (stat of every file + the store): {remembered:.2f} s; opening the warm "
             f"decoded cache (index, digests, memmap): {reopen:.2f} s"]
    publish("JPEG decode vs decoded cache", lines, __file__, argv, append=not args.no_append)
    return lines


if __name__ == "__main__":
    main()
