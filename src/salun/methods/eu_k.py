"""EU-k: exact unlearning of the last k layers.

Goel, Prabhu, Sanyal, Lim, Torr, Kumaraguru, "Towards Adversarial Evaluation of Unlearning
Algorithms" (arXiv 2201.06640, 2022). Objective: re-initialise the last k layers, then
min over them of E_{D_r} CE(theta; x, y) from scratch, every other parameter frozen at theta_o.

"Layer" is defined as in :mod:`salun.methods.cf_k` (modules owning parameters directly, in
``model.modules()`` order). Re-initialisation calls each chosen module's
``reset_parameters()`` after ``torch.manual_seed(data.seed)`` (a BatchNorm's reset also resets
its running statistics). With a user mask, only elements that are salient *and* in the last k
layers are re-initialised and trained; every other element keeps its original value
bit-for-bit. Defaults: lr 0.01 as in the SCRUB authors' EU-k runs (Kurmanji et al., NeurIPS
2023, who train for the original model's epoch budget); 20 epochs here, as for Retrain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim
from salun.methods.cf_k import last_layers, layer_mask, train_last_layers


@torch.no_grad()
def reinit_last_layers(model, k: int, seed: int, mask=None) -> None:
    """Reset the last ``k`` layers (seeded); restore elements outside ``mask``."""
    keep = layer_mask(model, k, mask)
    if keep.selected == 0:
        raise SalunError(f"EU-k: the mask selects no weight in the last {k} layers")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    for name, module in last_layers(model, k):
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            raise SalunError(
                f"layer {name!r} ({type(module).__name__}) has no reset_parameters(); "
                "EU-k cannot re-initialise it (use a smaller k, or cf_k)"
            )
        reset()
    for n, p in model.named_parameters():
        m = keep.masks[n].to(p.device)
        p.copy_(torch.where(m, p, before[n]))


@METHODS.register("eu_k")
@dataclass
class EUk(Optim):
    epochs: int = 20
    lr: float = 0.01
    k: int = 2  # last k parameterised modules (see salun.methods.cf_k)
    freeze_norm_stats: bool = True

    def check(self) -> None:
        super().check()
        if self.k < 1:
            raise SalunError(f"k must be >= 1 (number of last layers to retrain), got {self.k}")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, forget=False)
        reinit_last_layers(model, self.k, data.seed, mask)
        return train_last_layers(self, model, data, task, mask, "EU-k")
