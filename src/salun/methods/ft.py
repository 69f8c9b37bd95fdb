"""FT: fine-tune on the retain set (catastrophic forgetting of D_f).

Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023; the FT baseline of
SalUn (Fan et al., ICLR 2024). Objective: min_theta E_{D_r} CE(theta; x, y).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit


@METHODS.register("ft")
@dataclass
class FT(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.01

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, forget=False)
        retain = task.loader(data.retain, self.batch_size, True, data.seed)
        return fit(model, lambda e: [(retain, task.loss)], self, mask, task.progress, "FT")
