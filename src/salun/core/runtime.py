"""How the loops run: precision, torch.compile, determinism, and where checkpoints go.

Methods stay unchanged: they call ``fit`` with their hyperparameters only. The run layer (CLI,
bench worker) opens a :func:`session` for a run folder and :func:`configure` s it from the
config's ``runtime`` section; ``fit`` reads :func:`current`. Without a session every loop runs
in fp32, uncompiled, without checkpoints, exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".checkpoints"  # a hidden sibling of the run folder: .NAME.checkpoints


@dataclass
class Runtime:
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 0  # 0: only when a loop ends
    folder: Path | None = None  # checkpoints go to folder / "checkpoints"; None: no checkpoints
    resume: bool = False
    task: Any = None  # the run's task: its generator (diffusion noise) is part of a checkpoint
    # what a checkpoint must match to be resumed: the run's config fields and split hash
    fingerprint: dict[str, Any] | None = None
    # one entry per loop resumed from a checkpoint: (its seconds before, times it was resumed)
    resumed: list[tuple[float, int]] = field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path | None:
        # Beside the run folder, not in it: a run folder appears complete or not at all (it is
        # built in a staged sibling), while checkpoints must outlive a killed process.
        if self.folder is None:
            return None
        folder = Path(os.path.abspath(self.folder))
        return folder.parent / f".{folder.name}{CHECKPOINT_SUFFIX}"

    def autocast(self, device: torch.device):
        """bf16/fp16 autocast for the forward pass and loss (fp32: a no-op context)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler, enabled for fp16 only (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")


_CURRENT = Runtime()


def current() -> Runtime:
    return _CURRENT


@contextlib.contextmanager
def session(folder: str | Path | None, resume: bool = False) -> Iterator[Runtime]:
    """Run settings for one run folder; on a clean exit its checkpoints are removed."""
    global _CURRENT
    old = _CURRENT
    _CURRENT = Runtime(folder=None if folder is None else Path(folder), resume=resume)
    try:
        yield _CURRENT
        _clean(_CURRENT)
    finally:
        _CURRENT = old


def _clean(rt: Runtime) -> None:
    from salun.core.distributed import barrier, is_main

    barrier()
    d = rt.checkpoint_dir
    if d is not None and d.is_dir() and is_main():
        shutil.rmtree(d, ignore_errors=True)


def configure(cfg: Any, task: Any = None) -> Runtime:
    """Take ``cfg.runtime`` (precision, compile, deterministic, checkpoint_every) and the task."""
    rt = _CURRENT
    r = cfg.runtime
    rt.precision, rt.compile = r.precision, bool(r.compile)
    rt.checkpoint_every, rt.deterministic = int(r.checkpoint_every), bool(r.deterministic)
    if task is not None:
        rt.task = task
    if rt.deterministic:
        # cuBLAS needs a fixed workspace for deterministic matmuls (set before CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return rt


def bind_task(task: Any) -> None:
    """Called by ``prepare``: the current run's task (its noise generator is checkpointed)."""
    _CURRENT.task = task


def bind_run(fingerprint: dict[str, Any]) -> None:
    """Called by ``prepare``: what identifies the current run (``Config.fingerprint`` and the
    split's hash); each checkpoint records it and is resumed only by the same run."""
    import json

    _CURRENT.fingerprint = json.loads(json.dumps(fingerprint, default=str))


class Stopwatch:
    """Wall-clock seconds of a piece of work since it started, plus the seconds its loops had
    spent before an interruption (recorded in their checkpoints) when a run was resumed:
    ``seconds`` is the total over every stretch, ``resumes`` how often it was resumed."""

    def __init__(self) -> None:
        self._rt = _CURRENT
        self._first = len(self._rt.resumed)
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        before = sum(s for s, _ in self._rt.resumed[self._first :])
        return time.perf_counter() - self._start + before

    @property
    def resumes(self) -> int:
        return max((n for _, n in self._rt.resumed[self._first :]), default=0)
