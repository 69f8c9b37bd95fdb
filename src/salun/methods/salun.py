"""SalUn: saliency unlearning = random labelling restricted to salient weights.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both
Image Classification and Generation", ICLR 2024 (arXiv 2310.12508), eq. 8:
    min_{theta_u = m * (theta_o + dtheta) + (1 - m) * theta_o}
        E_{D_f, y' != y} CE(theta_u; x, y') + alpha * E_{D_r} CE(theta_u; x, y)

Two forms:
- ``form="reference"`` (default): as the authors' code runs it (CIFAR-10/SVHN path), each epoch
  is one pass over D_f with random labels, then one full pass over D_r; alpha is implicit.
- ``form="paper"``: each step pairs a D_r batch with a (cycled) D_f batch and weights the
  retain term by ``alpha``.

Random labels (``labels``, see :mod:`salun.methods.rl`): drawn afresh for every batch, by
default from all classes as the reference code does (chosen by measurement, see there);
``labels="other"`` draws y' != y (eq. 8 as written), ``labels="fixed"`` keeps one table for all
epochs (the former default).

Calibration (``calibrate=True``, the default; see :mod:`salun.methods._calibrate`): when a
validation split is given, the run picks its learning rate from ``lr_grid`` x ``lr`` and its
epoch by a Retrain-free estimate of the Avg. Gap; without a validation split it runs as is.

Without a mask, SalUn computes its own (top ``mask_ratio`` of |grad of -CE on D_f|, global);
in the pipeline the mask comes from ``mask.ratio`` (a different ``unlearn.params.mask_ratio``
is refused) and ``unlearn.use_mask=false`` is refused: SalUn without a mask is RL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, cycle, fit
from salun.methods.rl import check_labels, forget_label_loss
from salun.methods.saliency import compute_saliency_mask

FORMS = ("reference", "paper")


@METHODS.register("salun")
@dataclass
class SalUn(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.013
    form: str = "reference"  # reference | paper
    labels: str = "all"  # all (per batch, reference) | other (y' != y, per batch) | fixed (table)
    alpha: float | None = None  # retain weight (paper form); None: the task's (1, DDPM 1e-3)
    mask_ratio: float = 0.5  # used only when no mask is passed (Python API)
    calibrate: bool = True  # Retrain-free lr and epoch choice when a validation split exists
    # lr multipliers tried by the calibration; reaching down to 0.1 x lr keeps large random
    # forget sets (50 %) from being wrecked (first matrix run: every lr of (0.5, 1, 2) did)
    lr_grid: tuple[float, ...] = (0.1, 0.3, 1.0)
    mask_policy: ClassVar[str] = "required"  # SalUn is defined by its saliency mask

    def check(self) -> None:
        super().check()
        if self.form not in FORMS:
            raise SalunError(f"unknown SalUn form {self.form!r}; allowed: {', '.join(FORMS)}")
        check_labels(self.labels, "salun")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        if mask is None:
            mask = compute_saliency_mask(model, data.forget, task, self.mask_ratio)
        forget_loss = forget_label_loss(task, data.forget, data.seed, self.labels)
        if self.form == "reference":
            forget = task.loader(data.forget, self.batch_size, True, data.seed)
            retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)
            phases = [(forget, forget_loss), (retain, task.loss)]
            return fit(model, lambda e: phases, self, mask, task.progress, "SalUn")

        forget_iter = iter(cycle(task.loader(data.forget, self.batch_size, True, data.seed)))
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)

        alpha = self.alpha if self.alpha is not None else getattr(task, "retain_weight", 1.0)

        def paired(model, retain_batch):
            return forget_loss(model, next(forget_iter)) + alpha * task.loss(model, retain_batch)

        return fit(model, lambda e: [(retain, paired)], self, mask, task.progress, "SalUn")
