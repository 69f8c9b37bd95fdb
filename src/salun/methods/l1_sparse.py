"""l1-sparse: fine-tuning with an l1 penalty that decays linearly to zero.

Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023.
Objective at step t of T: min_theta E_{D_r} CE(theta; x, y) + gamma_t ||theta||_1,
gamma_t = alpha * (1 - t / T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit


@METHODS.register("l1_sparse")
@dataclass
class L1Sparse(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.01
    alpha: float = 5e-4  # initial l1 weight gamma_0

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, forget=False)
        retain = task.loader(data.retain, self.batch_size, True, data.seed)
        total = max(self.epochs * len(retain), 1)
        state = {"step": 0}

        def loss(model, batch):
            gamma = self.alpha * (1 - state["step"] / total)
            state["step"] += 1
            l1 = torch.stack([p.abs().sum() for p in model.parameters() if p.requires_grad]).sum()
            return task.loss(model, batch) + gamma * l1

        return fit(model, lambda e: [(retain, loss)], self, mask, task.progress, "l1-sparse")
