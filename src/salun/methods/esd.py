"""ESD: erased diffusion, adapted to a class-conditional DDPM.

Gandikota, Materzynska, Fiotto-Longo & Bau, "Erasing Concepts from Diffusion Models", ICCV 2023;
the class-conditional form used as a baseline in SalUn (Fan et al., ICLR 2024). Objective:
    min_theta E_{x in D_f, t, eps} || eps_theta(x_t, c_f) - [eps*(x_t, null) - eta (eps*(x_t, c_f)
    - eps*(x_t, null))] ||^2,
where eps* is the frozen original, so guidance toward c_f is turned into guidance away from it.
x_t are the forget images noised at a uniform time step (the data is available here, so no
sampling from the model is needed). ``alpha`` > 0 adds the DDPM loss on D_r (0 = ESD as
published). Diffusion-only: it needs the null label of classifier-free guidance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, cycle, fit
from salun.registry import METHODS


@METHODS.register("esd")
@dataclass
class ESD(Optim):
    tasks: ClassVar[tuple[str, ...]] = ("ddpm",)
    epochs: int = 10
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    eta: float = 1.0  # negative guidance strength
    alpha: float = 0.0  # weight of the DDPM loss on D_r (0: none, as in the ESD paper)

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=self.alpha > 0)
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        retain = iter(cycle(task.loader(data.retain, self.batch_size, True, data.seed + 1)))

        def loss(model, batch):
            x_t, t, _, y = task.noised(batch)
            with torch.no_grad():
                e_c = task.predict(frozen, x_t, t, y)
                e_u = task.predict(frozen, x_t, t, torch.full_like(y, task.null_label))
                target = e_u - self.eta * (e_c - e_u)
            value = F.mse_loss(task.predict(model, x_t, t, y), target)
            if self.alpha > 0:
                value = value + self.alpha * task.loss(model, next(retain))
            return value

        return fit(model, lambda e: [(forget, loss)], self, mask, task.progress, "ESD")
