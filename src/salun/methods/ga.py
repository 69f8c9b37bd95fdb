"""GA: gradient ascent on the forget set.

Thudi et al., "Unrolling SGD", EuroS&P 2022; Graves et al., AAAI 2021; the GA baseline of SalUn
(Fan et al., ICLR 2024). Objective: max_theta E_{D_f} CE(theta; x, y), i.e. min -CE on D_f.
Very sensitive to its learning rate: keep it low and search a small grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit


@METHODS.register("ga")
@dataclass
class GA(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 5
    lr: float = 1e-4

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=False)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        return fit(
            model,
            lambda e: [(forget, lambda m, b: -task.loss(m, b))],
            self,
            mask,
            task.progress,
            "GA",
        )
