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

No pickle is read back from a bench folder. submitit pickles the job function for its own
transport; salun gives it a new folder for each invocation (``OUT/submitit/<time>-<random>/``,
created by ``tempfile.mkdtemp``, so nothing planted beforehand lies at a path submitit uses), waits
for each job with ``Job.done()`` (the process or SLURM state; nothing is unpickled) and never
calls ``Job.result()``, which would unpickle submitit's ``*_result.pkl``. Results travel as JSON
that salun writes: the run's ``metrics.json`` / ``error.json``, and an exit record
``<n>.exit.json`` (``{"token", "returncode"}``) that the job writes into that folder; a run
succeeded when its record carries the token drawn for it, return code 0, and ``metrics.json``
exists. Run folders, models and checkpoints stay safetensors and JSON.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from salun.core.errors import SalunError
from salun.core.io import write_json

log = logging.getLogger(__name__)

EXECUTORS = ("subprocess", "local", "slurm")
_POLL_S = 0.5
_RECORD_GRACE_S = 30.0  # SLURM: the record may reach a shared filesystem after the job ends
_RECORD_MAX_BYTES = 4096


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

    if not folders:
        return []
    logs = fresh_folder(Path(work_dir or Path(folders[0]).parents[2]) / "submitit")
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
    grace = 0.0 if executor == "local" else _RECORD_GRACE_S
    waves = [list(folders)] if executor == "slurm" else _chunks(list(folders), jobs)
    out: list[bool] = []
    n = 0
    for wave in waves:
        submitted = []
        for folder in wave:
            record, token = logs / f"{n}.exit.json", secrets.token_hex(16)
            n += 1
            job = ex.submit(worker.job, str(folder), str(record), token)
            submitted.append((folder, job, record, token))
        for folder, job, record, token in submitted:
            _wait(job)
            code = exit_code(record, token, grace)
            ok = code == 0 and (folder / "metrics.json").is_file()
            if not ok and not (folder / "error.json").exists():
                write_json(folder / "error.json", {"error": _why(job, code), "job": job.job_id})
            if on_done is not None:
                on_done(folder, ok)
            out.append(ok)
    return out


def fresh_folder(base: Path) -> Path:
    """A new, uniquely named folder under ``base`` (mode 0700), created here and now."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))
    except OSError as e:
        raise SalunError(f"cannot create a folder for submitit under {str(base)!r}: {e}") from None


def _wait(job: Any) -> None:
    """Until the job ends: ``done()`` asks the process (local) or SLURM; nothing is unpickled."""
    while not job.done():
        time.sleep(_POLL_S)


def exit_code(record: Path, token: str, grace: float = 0.0) -> int | None:
    """The return code in a job's exit record, or None when the record is missing or not the one
    written for ``token`` (a JSON object ``{"token": str, "returncode": int}``)."""
    deadline = time.monotonic() + grace
    while not record.is_file() and time.monotonic() < deadline:  # a slow shared filesystem
        time.sleep(_POLL_S)
    if not record.is_file():  # missing (or not a regular file: never opened)
        return None
    try:
        with open(record, "rb") as f:
            raw = f.read(_RECORD_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _RECORD_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("token") != token:
        log.warning("exit record %s is not the one written for its job; ignored", record)
        return None
    code = data.get("returncode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _why(job: Any, code: int | None) -> str:
    """One line for a failed job: the last line of its stderr log (text), else its state."""
    if code is not None and code != 0:
        return f"the worker exited with code {code}"
    try:
        lines = [line for line in (job.stderr() or "").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1].strip() if lines else f"job ended without an exit record ({job.state})"


def _chunks(items: list[Path], n: int) -> list[list[Path]]:
    return [items[i : i + n] for i in range(0, len(items), n)]
