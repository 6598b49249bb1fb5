"""Benchmarks: each ``bench_*.py`` measures one thing and appends a dated block to BENCHMARKS.md.

Run them from the repository root as ``python -m benchmarks.bench_<name>``. What several of them need is in
common.py (blocks, the machine, result lines) and model_runs.py (the model runs they share); no benchmark imports
another (tests/test_layers.py).
"""
