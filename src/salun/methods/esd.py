"""ESD: erased diffusion, for a class-conditional DDPM and for Stable Diffusion.

Gandikota, Materzynska, Fiotto-Longo & Bau, "Erasing Concepts from Diffusion Models", ICCV 2023;
the class-conditional form used as a baseline in SalUn (Fan et al., ICLR 2024). Objective:
    min_theta E_{x in D_f, t, eps} || eps_theta(x_t, c_f) - [eps*(x_t, null) - eta (eps*(x_t, c_f)
    - eps*(x_t, null))] ||^2,
where eps* is the frozen original, so guidance toward c_f is turned into guidance away from it.
x_t are the forget images noised at a uniform time step (the data is available here, so no
sampling from the model is needed). ``alpha`` > 0 adds the DDPM loss on D_r (0 = ESD as
published). Diffusion-only: it needs the null label of classifier-free guidance.

On Stable Diffusion (``text_to_image``) the label is the prompt row of the task's embedding table
and ``train`` picks the weights, as in the paper: ``xattn`` (ESD-x, the cross-attention layers
only, for a class or a style), ``noxattn`` (ESD-u, everything but cross-attention, for global
concepts such as nudity) or ``full``. The others are frozen (requires_grad off) for the run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from salun.core.errors import SalunError, unknown_choice
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, cycle, fit

TRAIN = ("full", "xattn", "noxattn")


@METHODS.register("esd")
@dataclass
class ESD(Optim):
    tasks: ClassVar[tuple[str, ...]] = ("ddpm", "text_to_image")
    epochs: int = 10
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    eta: float = 1.0  # negative guidance strength
    alpha: float = 0.0  # weight of the DDPM loss on D_r (0: none, as in the ESD paper)
    train: str = "full"  # full | xattn (ESD-x) | noxattn (ESD-u): which weights are trained

    def check(self) -> None:
        super().check()
        if self.train not in TRAIN:
            raise unknown_choice("ESD train", self.train, TRAIN)

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=self.alpha > 0)
        saved = {n: p.requires_grad for n, p in model.named_parameters()}
        if self.train != "full":
            xattn = {n for n in saved if ".attn2." in n}
            if not xattn:
                raise SalunError(
                    f"ESD train={self.train} needs cross-attention layers (attn2); this model has "
                    "none (use train=full)"
                )
            for n, p in model.named_parameters():
                p.requires_grad_((n in xattn) == (self.train == "xattn"))
        try:
            return self._run(model, data, task, mask)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(saved[n])

    def _run(self, model, data: UnlearnData, task, mask):
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
