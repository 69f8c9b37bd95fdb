"""Retrain: exact unlearning by training from scratch on the retain set (the gold standard).

Every other method is judged by its gap to Retrain on the same split (Fan et al., ICLR 2024).
Objective: min_theta E_{D_r} CE(theta; x, y) from a fresh initialisation.
It re-initialises the given model in place (``reset_parameters`` on every module), so it needs
no model factory. A saliency mask makes no sense for it and is refused.

In the pipeline (``unlearn.method=retrain``) Retrain is trained with the config's ``retrain:``
recipe (or ``train:``), cached; the parameters given in ``unlearn.params`` override that recipe's
fields (``salun.run.retrain_recipe``), and parameters a recipe has no field for are refused.
The defaults below apply to the Python API (``salun.unlearn(..., method="retrain")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from salun.errors import SalunError
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.models import reinitialise
from salun.registry import METHODS


@METHODS.register("retrain")
@dataclass
class Retrain(Optim):
    mask_policy: ClassVar[str] = "refused"  # a fresh model: nothing to mask
    # not text_to_image: retraining Stable Diffusion from scratch is not a baseline anyone runs
    tasks: ClassVar[tuple[str, ...]] = tuple(t for t in GENERIC_TASKS if t != "text_to_image")
    epochs: int = 20
    lr: float = 0.1
    batch_size: int = 128
    schedule: str = "cosine"
    accepts_mask: ClassVar[bool] = False

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        if mask is not None:
            raise SalunError("method 'retrain' trains every weight from scratch and takes no mask")
        require_nonempty(data, forget=False)
        reinitialise(model, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed)
        return fit(model, lambda e: [(retain, task.loss)], self, None, task.progress, "Retrain")
