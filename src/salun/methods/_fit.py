"""The one shared optimisation loop: optimizer, schedule, epochs, mask enforcement, progress.

Every gradient method describes an epoch as a list of *phases* ``(loader, loss_fn)``; ``fit``
runs them in order, each batch doing: loss -> backward -> mask gradients -> step -> restore
non-salient weights. Methods keep their objective visible in their own file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from salun.config import OPTIMIZERS, SCHEDULES
from salun.errors import SalunError, unknown_choice
from salun.saliency import MaskGuard, SaliencyMask

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
    gamma: float = 0.1
    grad_clip: float | None = None

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
    """Run ``args.epochs`` epochs; ``phases(epoch)`` gives that epoch's (loader, loss) list."""
    args.check()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, args)
    guard = MaskGuard(model, mask, opt)
    step = 0
    for epoch in range(args.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(args, epoch)
        running, count = 0.0, 0
        for loader, loss_fn in phases(epoch):
            bar = tqdm(
                loader, desc=f"{desc} {epoch + 1}/{args.epochs}", disable=not progress, leave=False
            )
            for batch in bar:
                loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                guard.before_step()
                if args.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
                opt.step()
                guard.after_step()
                step += 1
                if after_step is not None:
                    after_step(step)
                running += float(loss.detach())
                count += 1
        log.debug("%s epoch %d: mean loss %.4f", desc, epoch + 1, running / max(count, 1))
    model.eval()
    return model


def cycle(loader: Iterable) -> Iterable:
    """Endless iteration over a loader (re-shuffling each pass)."""
    while True:
        yield from loader
