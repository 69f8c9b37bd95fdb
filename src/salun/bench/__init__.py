"""Benchmark harness: a grid of runs (scenarios x seeds x methods), each in its own process,
resumable, and a report with means, standard deviations and 95 % confidence intervals."""

from salun.bench.grid import RunSpec, expand_grid
from salun.bench.report import build_report
from salun.bench.runner import run_bench

__all__ = ["RunSpec", "build_report", "expand_grid", "run_bench"]
