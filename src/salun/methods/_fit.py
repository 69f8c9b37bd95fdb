"""The one shared optimisation loop: optimizer, schedule, epochs, mask enforcement, progress.

Every gradient method describes an epoch as a list of *phases* ``(loader, loss_fn)``; ``fit``
runs them in order, each batch doing: loss -> backward -> mask gradients -> step -> restore
non-salient weights. Methods keep their objective visible in their own file.

After every epoch the loop logs the mean loss at INFO, appends one JSON line to the active
history file (``history.jsonl`` of the run folder, see :func:`recording`) and calls each active
callback (:func:`recording`; ``salun.unlearn(..., callbacks=[...])``) with a dict
``{"desc", "epoch", "epochs", "loss", "phase_losses", "lr", "seconds", "steps"}`` (``loss``: the
mean over the epoch's steps; ``phase_losses``: the mean of each phase, e.g. D_f then D_r):
TensorBoard or W&B plug in there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from salun.config import OPTIMIZERS, SCHEDULES
from salun.core import checkpoint, distributed, runtime
from salun.core.errors import SalunError, unknown_choice
from salun.methods.saliency import MaskGuard, SaliencyMask

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, object], torch.Tensor]
Phase = tuple[Iterable, LossFn]


@dataclass
class Optim:
    """Optimisation fields shared by gradient methods (each method sets its own defaults)."""

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adam | adamw | adam8bit (bitsandbytes)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "constant"  # constant | step | cosine
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1  # lr decay factor of schedule=step
    grad_clip: float | None = None
    # Retrain-free calibration (salun.methods._calibrate): with a validation split, run once per
    # lr in lr_grid x lr, keep each run's best epoch by the estimate, return the best run.
    calibrate: bool = False
    lr_grid: tuple[float, ...] = (0.5, 1.0, 2.0)

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_choice("schedule", self.schedule, SCHEDULES)
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise SalunError(
                f"epochs must be >= 0, lr > 0, batch_size >= 1 "
                f"(got epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size})"
            )
        if not self.lr_grid or any(not isinstance(m, int | float) or m <= 0 for m in self.lr_grid):
            raise SalunError(f"lr_grid must be positive lr multipliers, got {self.lr_grid!r}")


EpochCallback = Callable[[dict[str, Any]], None]

_HISTORY: list[Path] = []
_CALLBACKS: list[EpochCallback] = []


@contextlib.contextmanager
def recording(
    history: str | os.PathLike | None = None, callbacks: Sequence[EpochCallback] = ()
) -> Iterator[None]:
    """While open, every ``fit`` epoch is appended to ``history`` (JSON lines) and passed to
    each of ``callbacks``. Nests: an inner block adds to the outer one's."""
    for cb in callbacks:
        if not callable(cb):
            raise SalunError(f"callbacks must be callables taking a dict, got {cb!r}")
    paths = [] if history is None else [Path(history)]
    _HISTORY.extend(paths)
    _CALLBACKS.extend(callbacks)
    try:
        yield
    finally:
        for p in paths:
            _HISTORY.remove(p)
        for cb in callbacks:
            _CALLBACKS.remove(cb)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line appended with a single O_APPEND write: a crash leaves whole lines only."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _epoch_end(record: dict[str, Any]) -> None:
    log.info(
        "%s epoch %d/%d: mean loss %.4f, lr %.3g, %.2fs",
        record["desc"],
        record["epoch"],
        record["epochs"],
        record["loss"],
        record["lr"],
        record["seconds"],
    )
    if not distributed.is_main():
        return
    for path in list(_HISTORY):
        _append_line(path, record)
    for cb in list(_CALLBACKS):
        cb(dict(record))


def make_optimizer(params, args: Optim) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adam8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            raise SalunError(
                "optimizer adam8bit needs bitsandbytes, which is not installed "
                "(pip install bitsandbytes); allowed without it: sgd, adam, adamw"
            ) from None
        return bnb.optim.Adam8bit(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def lr_at(args: Optim, epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based) under the schedule."""
    if args.schedule == "step":
        return args.lr * args.gamma ** sum(epoch >= m for m in args.milestones)
    if args.schedule == "cosine" and args.epochs > 0:
        return 0.5 * args.lr * (1 + math.cos(math.pi * epoch / args.epochs))
    return args.lr


def fit(
    model: nn.Module,
    phases: Callable[[int], list[Phase]],
    args: Optim,
    mask: SaliencyMask | None = None,
    progress: bool = True,
    desc: str = "unlearn",
    after_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """Run ``args.epochs`` epochs; ``phases(epoch)`` gives that epoch's (loader, loss) list.

    How it runs comes from ``salun.core.runtime`` (precision, compile, checkpoints) and
    ``salun.core.distributed`` (DDP when torch.distributed is on); what it computes does not.
    Under :func:`salun.methods._calibrate.monitoring`, the monitor scores the model after every
    epoch and the best epoch's weights are restored at the end.
    """
    from salun.methods._calibrate import active_monitor

    args.check()
    monitor = active_monitor()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, args)
    guard = MaskGuard(model, mask, opt)  # on every rank: the masked update is rank-local
    rt = runtime.current()
    device = params[0].device if params else torch.device("cpu")
    net = distributed.wrap_ddp(model)  # loss functions get ``net``; DDP all-reduces gradients
    if rt.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    scaler = rt.scaler(device)  # a no-op unless precision is fp16
    ckpt = checkpoint.for_fit(desc, args, model, opt, scaler, mask)
    resumed = ckpt.load() if ckpt is not None else None
    pos, running, count = resumed if resumed else (checkpoint.Position(), 0.0, 0)
    step, total = pos.step, torch.zeros((), device=device)  # the loss stays on the device
    progress = progress and distributed.is_main()
    for epoch in range(pos.epoch, args.epochs):
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(args, epoch)
        plist = phases(epoch)
        phase_sum = torch.zeros(len(plist), device=device)  # per-phase losses for the history
        phase_n = [0] * len(plist)
        resuming = resumed is not None and epoch == pos.epoch
        if resuming and ckpt is not None:
            ckpt.check_phases(pos, plist)
            ckpt.restore_loaders(plist)
        for i, (loader, loss_fn) in enumerate(plist):
            if resuming and i < pos.phase:
                continue
            skip = pos.batch if resuming and i == pos.phase else 0
            batches = ckpt.iterate(loader, epoch, i, skip) if ckpt else _iterate(loader, epoch)
            bar = tqdm(
                batches,
                desc=f"{desc} {epoch + 1}/{args.epochs}",
                disable=not progress,
                leave=False,
                total=_len(loader, skip),
            )
            for b, batch in enumerate(bar, start=skip + 1):
                with rt.autocast(device):
                    loss = loss_fn(net, batch)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)  # true gradients for the mask and clipping
                guard.before_step()
                if args.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
                scaler.step(opt)
                scaler.update()
                guard.after_step()
                step += 1
                if after_step is not None:
                    after_step(step)
                total += loss.detach().float()
                phase_sum[i] += loss.detach().float()
                phase_n[i] += 1
                count += 1
                if ckpt is not None and ckpt.due(step):
                    here = checkpoint.Position(epoch, i, b, step)
                    ckpt.save(here, plist, running + float(total), count)
            resuming = False
        running += float(total)  # one host sync per epoch
        if not math.isfinite(running) and monitor is None and not scaler.is_enabled():
            # fp16 skips steps with inf gradients by design; calibration scores (and drops)
            # a diverged candidate lr itself
            raise SalunError(
                f"{desc}: the loss became non-finite (NaN or inf) in epoch {epoch + 1}/"
                f"{args.epochs} at lr={lr_at(args, epoch):g}; try a smaller lr (or look for "
                "NaN in the data)"
            )
        _epoch_end(
            {
                "desc": desc,
                "epoch": epoch + 1,
                "epochs": args.epochs,
                "loss": running / max(count, 1),
                "phase_losses": [
                    t / n if n else None for t, n in zip(phase_sum.tolist(), phase_n, strict=True)
                ],
                "lr": lr_at(args, epoch),
                "seconds": round(time.perf_counter() - started, 4),
                "steps": step,
            }
        )
        running, count, total = 0.0, 0, torch.zeros((), device=device)
        if monitor is not None:
            monitor.epoch_end(model, epoch + 1)
    if monitor is not None:
        monitor.finish(model)
    distributed.broadcast_buffers(model)  # BatchNorm statistics: rank 0's, as DDP keeps them
    if ckpt is not None:
        ckpt.finish_resume()
        ckpt.save(checkpoint.Position(args.epochs, 0, 0, step), [], 0.0, 0)
    distributed.check_in_sync(model, desc)
    model.eval()
    return model


def _iterate(loader: Iterable, epoch: int) -> Iterable:
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # DistributedSampler: a fresh order per epoch, same on all ranks
    return loader


def _len(loader: Iterable, skip: int) -> int | None:
    try:
        return len(loader) - skip  # type: ignore[arg-type]
    except TypeError:
        return None


def cycle(loader: Iterable) -> Iterable:
    """Endless iteration over a loader (re-shuffling each pass), resumable from a checkpoint."""
    return checkpoint.Cycle(loader)
