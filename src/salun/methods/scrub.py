"""SCRUB: a student moves away from its teacher on D_f and stays close to it on D_r.

Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (arXiv 2302.09880). Teacher = frozen copy of the original model; the student
starts at the original. Objective (min-max, alternated per epoch):
    max-steps on D_f:  min_theta  -KL(p_T(x) || p_theta(x))
    min-steps on D_r:  min_theta  alpha * KL(p_T(x) || p_theta(x)) + ce_weight * CE(theta; x, y)
with p = softmax(logits / T) and KL scaled by T^2 (Hinton et al.'s distillation loss, batch
mean). Epochs 0..max_steps-1 run one max pass over D_f and then one min pass over D_r; later
epochs run the min pass only.

Defaults are the authors' CIFAR-10 ("large-scale") settings in meghdadk/SCRUB: SGD lr 5e-4,
momentum 0.9, weight decay 5e-4, 3 epochs, max_steps 2, T 4, alpha 0.001, CE weight (their
gamma) 0.99, D_r batches of 256 and D_f batches of 512 (their lr decay milestones fall after epoch 3, so the
rate is constant). The CE weight is ``ce_weight`` here (the paper's gamma): ``gamma`` is the
shared lr schedule's decay factor (schedule=step). The authors' "rewind" variant (SCRUB+R) is
not implemented.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float):
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(student_logits.float() / T, dim=1),
            F.log_softmax(teacher_logits.float() / T, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * T**2
    )


def frozen_copy(model):
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@METHODS.register("scrub")
@dataclass
class SCRUB(Optim):
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 256  # D_r (min-step) batches
    forget_batch_size: int = 512  # D_f (max-step) batches
    max_steps: int = 2  # epochs that start with a max pass over D_f
    T: float = 4.0  # distillation temperature
    alpha: float = 0.001  # weight of KL on D_r
    ce_weight: float = 0.99  # weight of CE on D_r (the paper's gamma)

    def check(self) -> None:
        super().check()
        if self.max_steps < 0 or self.forget_batch_size < 1 or self.T <= 0:
            raise SalunError(
                f"scrub needs max_steps >= 0, forget_batch_size >= 1 and T > 0 (got "
                f"max_steps={self.max_steps}, forget_batch_size={self.forget_batch_size}, "
                f"T={self.T})"
            )
        if self.alpha < 0 or self.ce_weight < 0:
            raise SalunError(
                f"scrub alpha and ce_weight must be >= 0 "
                f"(got alpha={self.alpha}, ce_weight={self.ce_weight})"
            )

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        teacher = frozen_copy(model)
        forget = task.loader(data.forget, self.forget_batch_size, True, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)

        def kl_to_teacher(model, batch):
            x, y, _ = task.batch(batch)
            with torch.no_grad():
                t = task.logits(teacher, x)
            s = task.logits(model, x)
            return distill_kl(s, t, self.T), s, y

        def max_loss(model, batch):
            kl, _, _ = kl_to_teacher(model, batch)
            return -kl

        def min_loss(model, batch):
            kl, s, y = kl_to_teacher(model, batch)
            return self.alpha * kl + self.ce_weight * F.cross_entropy(s.float(), y)

        def phases(epoch):
            if epoch < self.max_steps:
                return [(forget, max_loss), (retain, min_loss)]
            return [(retain, min_loss)]

        return fit(model, phases, self, mask, task.progress, "SCRUB")
