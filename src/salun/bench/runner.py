"""Run a bench grid: each run in its own process, finished runs skipped on restart.

A run is finished when its folder holds ``metrics.json`` (written atomically, last). A run that
fails writes ``error.json`` with a one-line error and the sweep goes on; a restart retries it.
Original and Retrain models come from the shared cache, so each is trained once per
(dataset, model, split, seed, recipe).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from salun.bench.grid import RunSpec, expand_grid
from salun.config import Config
from salun.errors import SalunError
from salun.io import write_json, write_text

log = logging.getLogger(__name__)


def run_bench(
    cfg: Config,
    out: str | Path,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    timeout: float | None = None,
    jobs: int = 1,
    executor: str = "subprocess",
    cluster_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Execute every unfinished run of the grid; returns counts of done / skipped / failed.

    ``jobs`` runs at a time on ``executor`` (see :mod:`salun.bench.executors`).
    """
    from salun.bench.executors import EXECUTORS, run_folders

    if executor not in EXECUTORS:
        raise SalunError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise SalunError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out)
    runs = expand_grid(cfg)  # validates the whole grid before anything is written
    cache = str(Path(cache_dir) if cache_dir else out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "bench.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(out / "grid.json", [r.name for r in runs])
    counts = {"done": 0, "skipped": 0, "failed": 0}
    todo = []
    for spec in runs:
        folder = out / spec.name
        if (folder / "metrics.json").is_file():
            counts["skipped"] += 1
            continue
        _prepare_run(spec, folder, cache)
        todo.append(folder)
    bar = tqdm(total=len(todo), desc="bench", disable=not progress, unit="run")

    def done(folder: Path, ok: bool) -> None:
        counts["done" if ok else "failed"] += 1
        bar.set_postfix_str(folder.relative_to(out).as_posix())
        bar.update()

    run_folders(todo, _execute, jobs, executor, timeout, cluster_args, out, done)
    bar.close()
    log.info("bench %s: %s", out, counts)
    return counts


def _prepare_run(spec: RunSpec, folder: Path, cache: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tree = dict(spec.config)
    tree["cache_dir"] = cache
    tree["progress"] = False
    write_text(folder / "config.yaml", yaml.safe_dump(tree, sort_keys=False))
    write_json(folder / "run.json", {k: v for k, v in spec.to_dict().items() if k != "config"})
    err = folder / "error.json"
    if err.exists():
        err.unlink()


def _execute(folder: Path, timeout: float | None) -> bool:
    """Run one grid point in a child process; a crash or OOM there does not end the sweep."""
    cmd = [sys.executable, "-m", "salun.bench.worker", str(folder)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        write_json(folder / "error.json", {"error": f"timed out after {timeout}s"})
        return False
    if proc.returncode != 0 and not (folder / "error.json").exists():
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        write_json(folder / "error.json", {"error": tail, "returncode": proc.returncode})
    return proc.returncode == 0 and (folder / "metrics.json").is_file()


def load_run(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))
