"""SalUn: saliency unlearning = random labelling restricted to salient weights.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both
Image Classification and Generation", ICLR 2024 (arXiv 2310.12508), eq. 8:
    min_{theta_u = m * (theta_o + dtheta) + (1 - m) * theta_o}
        E_{D_f, y' != y} CE(theta_u; x, y') + alpha * E_{D_r} CE(theta_u; x, y)

Two forms:
- ``form="reference"`` (default): as the authors' code runs it, each epoch is one pass over D_f
  with fixed random labels drawn from *all* classes, then one full pass over D_r; alpha is
  implicit. Default because the published numbers and learning rates were produced this way.
- ``form="paper"``: the equation as written: y' drawn from the *other* classes, each step
  pairs a D_r batch with a (cycled) D_f batch and weights the retain term by ``alpha``.

Without a mask, SalUn computes its own (top ``mask_ratio`` of |grad of -CE on D_f|, global).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.errors import SalunError
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, cycle, fit
from salun.methods.rl import random_label_table, relabelled_loss
from salun.registry import METHODS
from salun.saliency import compute_saliency_mask

FORMS = ("reference", "paper")


@METHODS.register("salun")
@dataclass
class SalUn(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.013
    form: str = "reference"  # reference | paper
    alpha: float | None = None  # retain weight (paper form); None: the task's (1, DDPM 1e-3)
    mask_ratio: float = 0.5  # used only when no mask is passed
    uses_mask: bool = True

    def check(self) -> None:
        super().check()
        if self.form not in FORMS:
            raise SalunError(f"unknown SalUn form {self.form!r}; allowed: {', '.join(FORMS)}")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        if mask is None:
            mask = compute_saliency_mask(model, data.forget, task, self.mask_ratio)
        if self.form == "reference":
            table = random_label_table(task, data.forget, data.seed, exclude_true=False)
            forget = task.loader(data.forget, self.batch_size, True, data.seed)
            retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)
            phases = [(forget, relabelled_loss(task, table)), (retain, task.loss)]
            return fit(model, lambda e: phases, self, mask, task.progress, "SalUn")

        table = random_label_table(task, data.forget, data.seed, exclude_true=True)
        forget_loss = relabelled_loss(task, table)
        forget_iter = iter(cycle(task.loader(data.forget, self.batch_size, True, data.seed)))
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)

        alpha = self.alpha if self.alpha is not None else getattr(task, "retain_weight", 1.0)

        def paired(model, retain_batch):
            return forget_loss(model, next(forget_iter)) + alpha * task.loss(model, retain_batch)

        return fit(model, lambda e: [(retain, paired)], self, mask, task.progress, "SalUn")
