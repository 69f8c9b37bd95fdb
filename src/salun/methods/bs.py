"""BS: Boundary Shrink.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision
Boundary", CVPR 2023; the BS baseline of SalUn (Fan et al., ICLR 2024).
Objective: min_theta E_{(x,y) in D_f} CE(theta; x, y_nbi), where
    x_adv = clip_[0,1](x + epsilon * sign(grad_x CE(theta_o; x, y)))   (one FGSM step)
    y_nbi = argmax f_{theta_o}(x_adv)   (the "nearest but incorrect" class)
on a frozen copy of the original model in eval mode. The attack works in the model's input
space ([0, 1] images; normalisation lives inside the model), epsilon = 0.1 as in the paper.
If the attack fails for a sample, y_nbi is its true class (as in the reference code).

The adversarial labels depend only on the frozen original, so they are computed once, in one
pass over D_f, and then used for every epoch (the reference recomputes the same labels each
batch; the reference also rounds x_adv to the 1/255 grid, which is skipped here).
Defaults: 10 epochs, SGD momentum 0.9, lr 1e-4 (Chen et al. use 1e-5; search the lr: with a
D_f of one batch, as in the digits smoke preset, 1e-4 barely moves it and 1e-3 forgets it).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.methods.rl import relabelled_loss

log = logging.getLogger(__name__)


def fgsm_labels(model, dataset, task, epsilon: float, batch_size: int) -> torch.Tensor:
    """Per-sample label of ``model`` (eval mode) on its one-step FGSM image (by position)."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    labels = torch.empty(len(dataset), dtype=torch.long)
    flips = 0
    for batch in task.loader(dataset, batch_size, shuffle=False):
        x, y, pos = task.batch(batch)
        x = x.detach().clone().requires_grad_(True)
        loss = task.loss(frozen, (x, y, pos))
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x_adv = (x + epsilon * grad.sign()).clamp_(0.0, 1.0)
            pred = task.logits(frozen, x_adv).argmax(1)
        if pos is None:  # a user's DataLoader, iterated as it is: no sample positions
            raise SalunError("BS keys its labels on sample positions; pass a Dataset, not a loader")
        labels[pos] = pred.cpu()
        flips += int((pred != y).sum())
    log.info("BS: FGSM (eps %.3g) changed the label of %d of %d", epsilon, flips, len(labels))
    return labels


@METHODS.register("bs")
@dataclass
class BS(Optim):
    epochs: int = 10
    lr: float = 1e-4
    epsilon: float = 0.1  # FGSM step in [0, 1] input space (Chen et al.)

    def check(self) -> None:
        super().check()
        if not self.epsilon > 0:
            raise SalunError(f"bs.epsilon must be > 0, got {self.epsilon!r}")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=False)
        self.check()
        table = fgsm_labels(model, data.forget, task, self.epsilon, self.batch_size)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        phases = [(forget, relabelled_loss(task, table))]
        return fit(model, lambda e: phases, self, mask, task.progress, "BS")
