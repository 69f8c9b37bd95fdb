"""Run a bench grid: each run in its own process, finished runs skipped on restart.

A run is finished when its folder holds a readable ``metrics.json`` (written atomically, last)
whose config fingerprint matches the grid's (else it is stale and runs again). A run that
fails writes ``error.json`` with a one-line error and the sweep goes on; a restart retries it.
Original and Retrain models come from the shared cache, so each is trained once per
(dataset, model, split, seed, recipe).

Concurrency: the bench folder is locked (filelock ``.bench.lock``: a second bench on it fails with
one line), each run folder too while its worker runs (``.run.lock``), and cache entries while
they are trained. Workers run in their own process group and stop with the bench: on SIGTERM,
SIGHUP, Ctrl-C or exit through the handlers here, and on SIGKILL of the bench through the
parent-death signal each worker asks the kernel for.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from salun.bench.grid import RunSpec, expand_grid
from salun.config import Config, dump_yaml
from salun.core.errors import SalunError
from salun.core.io import check_out, hash_obj, read_json, sha256_bytes, write_json, write_text
from salun.core.limits import show_number
from salun.core.runtime import CHECKPOINT_SUFFIX

log = logging.getLogger(__name__)

LOCK_FILE = ".bench.lock"
RUN_LOCK = ".run.lock"


def fingerprint(spec: RunSpec) -> str:
    """Hash of what a run computes (its resolved config, kind, method, parameters, mask use).

    Stored in ``run.json`` and ``metrics.json``; a finished run whose fingerprint differs from
    the current grid's is stale and runs again (its old metrics are kept as
    ``metrics.stale-HASH.json``, which no report reads).
    """
    d = spec.to_dict()
    return hash_obj({k: d[k] for k in ("config", "kind", "method", "params", "use_mask")})[:16]


def finished(folder: Path, want: str) -> str:
    """'done', 'missing', 'corrupt' or 'stale' for the run in ``folder``."""
    path = folder / "metrics.json"
    if not path.is_file():
        return "missing"
    try:
        m = read_json(path, "metrics.json")
    except SalunError:
        return "corrupt"
    if not isinstance(m, dict) or "metrics" not in m:
        return "corrupt"
    return "done" if m.get("config_hash") == want else "stale"


@contextmanager
def bench_lock(out: Path):
    """Only one bench at a time in a folder (filelock); a second one fails with one line."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SalunError(
            f"bench folder {str(out)!r} is in use by another salun bench; wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_timeout(timeout: float | None) -> None:
    """``--timeout``: None (no limit) or a finite number of seconds above zero."""
    if timeout is None:
        return
    ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not ok or not math.isfinite(timeout) or timeout <= 0:
        raise SalunError(
            f"--timeout must be a finite number of seconds above 0, got {show_number(timeout)}"
        )


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

    Runs whose metrics.json is missing, corrupt or stale (made under another config) run,
    ``jobs`` at a time on ``executor`` (see :mod:`salun.bench.executors`).
    """
    from salun.bench.executors import EXECUTORS, run_folders

    if not str(out).strip():
        raise SalunError("--out is empty; give the path of a bench folder")
    if executor not in EXECUTORS:
        raise SalunError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise SalunError(f"--jobs must be >= 1, got {jobs}")
    check_timeout(timeout)
    # not the current, home or data folder; the model cache is the bench's own (--cache)
    inputs = [p for p in cfg.input_paths() if p != cfg.cache_dir]
    out = check_out(out, inputs=inputs, replaces=False)
    runs = expand_grid(cfg)  # validates the whole grid before anything is written
    cache = str(Path(cache_dir) if cache_dir else out / "cache")
    if Path(cache).exists() and not Path(cache).is_dir():
        raise SalunError(f"--cache {cache!r} is a file, not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SalunError(f"cannot create the bench folder {str(out)!r}: {e.strerror}") from None
    with bench_lock(out), _stop_workers_with_parent():
        write_text(out / "bench.yaml", dump_yaml(cfg.to_dict()))
        write_json(out / "grid.json", [r.name for r in runs])
        counts = {"done": 0, "skipped": 0, "failed": 0}
        todo = []
        for spec in runs:
            folder = out / spec.name
            want = fingerprint(spec)
            with _run_lock(folder):  # waits for a worker of an earlier bench still finishing
                state = finished(folder, want)
            if state == "done":
                counts["skipped"] += 1
                continue
            if state in ("stale", "corrupt"):
                old = folder / "metrics.json"
                old.rename(folder / f"metrics.{state}-{sha256_bytes(old.read_bytes())[:12]}.json")
                log.info("%s: metrics.json is %s; running it again", spec.name, state)
            _prepare_run(spec, folder, cache, want)
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


def _run_lock(folder: Path):
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / RUN_LOCK))


def _prepare_run(spec: RunSpec, folder: Path, cache: str, want: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tree = dict(spec.config)
    tree["cache_dir"] = cache
    tree["progress"] = False
    text = dump_yaml(tree)
    old = folder / "config.yaml"
    if old.is_file() and old.read_text(encoding="utf-8") != text:
        # checkpoints of the run's previous config resume nothing now (they would be refused)
        shutil.rmtree(folder.parent / f".{folder.name}{CHECKPOINT_SUFFIX}", ignore_errors=True)
    write_text(folder / "config.yaml", text)
    info = {k: v for k, v in spec.to_dict().items() if k != "config"}
    write_json(folder / "run.json", {**info, "config_hash": want})
    err = folder / "error.json"
    if err.exists():
        err.unlink()


_CHILDREN: set[subprocess.Popen] = set()


def _kill_children() -> None:
    """Stop every worker's process group (the worker and anything it started)."""
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _CHILDREN.discard(proc)


atexit.register(_kill_children)


@contextmanager
def _stop_workers_with_parent():
    """SIGTERM / SIGHUP to the bench stop its workers too (Ctrl-C arrives as KeyboardInterrupt;
    a SIGKILLed parent is covered by the workers' parent-death signal)."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, atexit still stops workers
        pass
    try:
        yield
    finally:
        _kill_children()
        for sig, h in old.items():
            signal.signal(sig, h)


def _execute(folder: Path, timeout: float | None) -> bool:
    """Run one grid point in a child process; a crash or OOM there does not end the sweep.

    The worker runs in its own process group (so its own children are stopped with it) and is
    stopped when the bench stops, however the bench stops.
    """
    cmd = [sys.executable, "-m", "salun.bench.worker", str(folder)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SALUN_BENCH_PARENT": str(os.getpid())}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    _CHILDREN.add(proc)
    try:
        _stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_children()
        write_json(folder / "error.json", {"error": f"timed out after {timeout}s"})
        return False
    finally:
        if proc.poll() is None:  # interrupted: stop the worker before going on
            _kill_children()
        _CHILDREN.discard(proc)
    if proc.returncode != 0 and not (folder / "error.json").exists():
        tail = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        write_json(folder / "error.json", {"error": tail, "returncode": proc.returncode})
    return proc.returncode == 0 and (folder / "metrics.json").is_file()


def load_run(folder: Path) -> dict[str, Any]:
    return read_json(folder / "run.json", "run.json")
