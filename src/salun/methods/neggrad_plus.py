"""NegGrad+: gradient descent on D_r and gradient ascent on D_f, jointly.

Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (arXiv 2302.09880). Objective per step:
    min_theta  alpha * CE(theta; B_r) - (1 - alpha) * CE(theta; B_f),
each step pairing a D_r batch B_r with the next batch B_f of a cycled (reshuffled) D_f loader;
an epoch is one pass over D_r.

Defaults follow the authors' public code (meghdadk/SCRUB, small-scale notebook): alpha = 0.95,
10 epochs, SGD lr 0.01 without momentum or weight decay. alpha is the weight of the retain term;
values closer to 1 (0.99-0.9999 appear in later re-runs) forget more gently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, cycle, fit


@METHODS.register("neggrad_plus")
@dataclass
class NegGradPlus(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    alpha: float = 0.95  # weight of CE on D_r; (1 - alpha) weighs the ascent on D_f

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.alpha <= 1.0:
            raise SalunError(f"neggrad_plus alpha must be in [0, 1], got {self.alpha!r}")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        forget_iter = iter(cycle(task.loader(data.forget, self.batch_size, True, data.seed)))
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)

        def paired(model, retain_batch):
            forget_batch = next(forget_iter)
            return self.alpha * task.loss(model, retain_batch) - (1 - self.alpha) * task.loss(
                model, forget_batch
            )

        return fit(model, lambda e: [(retain, paired)], self, mask, task.progress, "NegGrad+")
