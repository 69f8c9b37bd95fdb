"""RL: random labelling.

Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR 2020 (random-label baseline);
as run in SalUn (Fan et al., ICLR 2024). Objective per epoch: a pass over D_f with fixed random
labels y', then a pass over D_r with the true labels:
min_theta E_{D_f} CE(theta; x, y') + E_{D_r} CE(theta; x, y).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.registry import METHODS


def random_label_table(task, dataset, seed: int, exclude_true: bool) -> torch.Tensor:
    """One random label per forget sample, drawn once (fixed over epochs)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return task.relabel(task.labels_of(dataset), g, exclude_true)


def relabelled_loss(task, table: torch.Tensor):
    """CE against the per-sample random labels in ``table`` (indexed by batch position)."""

    def loss(model, batch):
        return task.loss(model, batch, labels=table[torch.as_tensor(batch[2])])

    return loss


@METHODS.register("rl")
@dataclass
class RL(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.01
    exclude_true: bool = False  # reference draws y' from all classes

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        table = random_label_table(task, data.forget, data.seed, self.exclude_true)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)
        phases = [(forget, relabelled_loss(task, table)), (retain, task.loss)]
        return fit(model, lambda e: phases, self, mask, task.progress, "RL")
