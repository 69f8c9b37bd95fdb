"""Where bench runs execute: local processes (``--jobs N`` at a time) or a cluster via submitit.

- ``subprocess`` (default): ``python -m salun.bench.worker RUN_DIR`` child processes, ``jobs``
  at a time, on this machine.
- ``slurm``: one SLURM job per run through submitit (an array of at most ``jobs`` running
  together); ``--cluster-arg slurm_partition=gpu`` etc. go to ``update_parameters``.
- ``local``: submitit's local backend (the same code path as SLURM, processes on this machine),
  for trying a cluster setup without a cluster, ``jobs`` at a time.

Every executor runs the same worker on the same run folders: a run is finished when its
``metrics.json`` exists, and an interrupted run resumes from its checkpoints. Original and
Retrain models are trained once: the model cache is under a file lock (``run.train_model``).
submitit (optional extra ``cluster``) pickles the job function for its own transport, as it
always does; run folders, models and checkpoints stay safetensors and JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from salun.core.errors import SalunError
from salun.core.io import write_json

log = logging.getLogger(__name__)

EXECUTORS = ("subprocess", "local", "slurm")


def run_folders(
    folders: Sequence[Path],
    execute: Callable[[Path, float | None], bool],
    jobs: int = 1,
    executor: str = "subprocess",
    timeout: float | None = None,
    cluster_args: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    on_done: Callable[[Path, bool], None] | None = None,
) -> list[bool]:
    """Run every folder; ``execute(folder, timeout)`` is the local runner. Returns successes."""
    if executor not in EXECUTORS:
        raise SalunError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if not isinstance(jobs, int) or jobs < 1:
        raise SalunError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if executor == "subprocess":
        results: dict[Path, bool] = {}

        def one(folder: Path) -> bool:
            ok = execute(folder, timeout)
            results[folder] = ok
            if on_done is not None:
                on_done(folder, ok)
            return ok

        if jobs == 1:
            return [one(f) for f in folders]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(one, folders))
    return _submitit(folders, jobs, executor, timeout, cluster_args or {}, work_dir, on_done)


def _submitit(
    folders: Sequence[Path],
    jobs: int,
    executor: str,
    timeout: float | None,
    cluster_args: dict[str, Any],
    work_dir: Path | None,
    on_done: Callable[[Path, bool], None] | None,
) -> list[bool]:
    try:
        import submitit
    except ImportError:
        raise SalunError(
            f"executor {executor!r} needs submitit: pip install 'salun[cluster]'"
        ) from None
    from salun.bench import worker

    logs = Path(work_dir or Path(folders[0]).parents[2]) / "submitit" if folders else Path(".")
    ex = submitit.AutoExecutor(folder=str(logs), cluster="local" if executor == "local" else None)
    if executor == "slurm" and ex.cluster != "slurm":
        raise SalunError("executor 'slurm' needs a SLURM cluster (sbatch was not found)")
    params: dict[str, Any] = {"timeout_min": math.ceil(timeout / 60) if timeout else 24 * 60}
    if executor == "slurm":
        params["slurm_array_parallelism"] = jobs
    params.update(cluster_args)
    try:
        ex.update_parameters(**params)
    except Exception as e:  # submitit names the unknown parameter
        raise SalunError(f"bad --cluster-arg for executor {executor!r}: {e}") from e
    waves = [list(folders)] if executor == "slurm" else _chunks(list(folders), jobs)
    out: list[bool] = []
    for wave in waves:
        submitted = [ex.submit(worker.main, [str(f)]) for f in wave]
        for folder, job in zip(wave, submitted, strict=True):
            try:
                ok = job.result() == 0 and (folder / "metrics.json").is_file()
            except Exception as e:  # killed, timed out, or failed outside the worker
                last = str(e).strip().splitlines()[-1:] or ["job failed"]
                if not (folder / "error.json").exists():
                    write_json(folder / "error.json", {"error": last[0], "job": job.job_id})
                ok = False
            if on_done is not None:
                on_done(folder, ok)
            out.append(ok)
    return out


def _chunks(items: list[Path], n: int) -> list[list[Path]]:
    return [items[i : i + n] for i in range(0, len(items), n)]
