"""Retrain: exact unlearning by training from scratch on the retain set (the gold standard).

Every other method is judged by its gap to Retrain on the same split (Fan et al., ICLR 2024).
Objective: min_theta E_{D_r} CE(theta; x, y) from a fresh initialisation.
It re-initialises the given model in place (``reset_parameters`` on every module), so it needs
no model factory; a model with parameters that no module can reset (a ViT's ``pos_embed``
``nn.Parameter``) is refused with a one-line error naming them, unless a user ``init_fn``
(``salun.unlearn(..., init_fn=...)``) re-initialises the model instead. A saliency mask makes no
sense for it and is refused.

In the pipeline (``unlearn.method=retrain``) Retrain is trained with the config's ``retrain:``
recipe (or ``train:``), cached; the parameters given in ``unlearn.params`` override that recipe's
fields (``salun.run.retrain_recipe``), and parameters a recipe has no field for are refused.
The defaults below apply to the Python API (``salun.unlearn(..., method="retrain")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.models import reinitialise


def unresettable(model: nn.Module) -> list[str]:
    """Names of the parameters that no module's ``reset_parameters`` re-initialises."""
    covered: set[int] = set()
    for module in model.modules():
        if callable(getattr(module, "reset_parameters", None)) or callable(
            getattr(module, "_reset_parameters", None)
        ):
            covered.update(id(p) for p in module.parameters(recurse=False))
    return [n for n, p in model.named_parameters() if id(p) not in covered]


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
    # Set per instance by salun.unlearn(init_fn=...): not a hyperparameter, never in a config.
    # A Callable[[nn.Module], None] (typed Any: mypy would read a callable ClassVar as a method)
    init_fn: ClassVar[Any] = None

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        if mask is not None:
            raise SalunError("method 'retrain' trains every weight from scratch and takes no mask")
        require_nonempty(data, forget=False)
        if self.init_fn is not None:
            torch.manual_seed(data.seed)
            with torch.no_grad():
                self.init_fn(model)
        else:
            stuck = unresettable(model)
            if stuck:
                more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
                raise SalunError(
                    f"Retrain cannot re-initialise {', '.join(stuck[:5])}{more} (no "
                    "reset_parameters() on their modules); pass init_fn=... to salun.unlearn"
                )
            reinitialise(model, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed)
        return fit(model, lambda e: [(retain, task.loss)], self, None, task.progress, "Retrain")
