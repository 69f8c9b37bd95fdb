"""SalUn-soft: random labelling with a soft-thresholded update instead of a hard saliency mask.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both
Image Classification and Generation", ICLR 2024 (arXiv 2310.12508), "soft-thresholding SalUn".
Objective: the RL objective of SalUn's reference form (per epoch one pass over D_f with random
labels drawn per batch, ``labels`` as in :mod:`salun.methods.rl`, then one pass over D_r),
min E_{D_f} CE(theta; x, y') +
E_{D_r} CE(theta; x, y), with the update delta = theta - theta_o soft-thresholded after every
optimiser step, theta <- theta_o + soft(theta - theta_o). Two definitions of ``soft``:

- ``form="proximal"`` (default; the authors' code, ``RL_proximal``): the proximal operator of
  an l1 penalty on the update, soft(d) = sign(d) * max(|d| - tau_t, 0), where tau_t is the
  k_t-th smallest |d| and k_t = floor(mask_ratio * (1 - t / T) * n) at step t of T (n weights).
  Early on about ``mask_ratio`` of the weights are pulled back to theta_o and the rest shrink
  by tau_t; the threshold decays to 0 by the last step. Saliency is implicit: the weights the
  objective moves most keep their update.
- ``form="saliency"``: the update of each weight is scaled by its normalised weight saliency,
  theta_t = theta_{t-1} + s * (theta'_t - theta_{t-1}) (theta'_t: the optimiser's proposal), so
  theta_u = theta_o + s * (sum of proposals), with s = min(1, g / gamma), g = |grad of -CE on
  D_f at theta_o| (SalUn's saliency, ``gradient_saliency``) and gamma the top-``mask_ratio``
  threshold of g. Weights SalUn's hard mask keeps (g >= gamma) get the full update, the others
  a share proportional to their saliency; with s in {0, 1} it is SalUn.

The authors' code redraws y' every epoch and, for CIFAR, shuffles D_f (relabelled) and D_r into
one loader; here y' is drawn per batch and the two passes are sequential, as in ``salun``'s
reference form.
An explicit hard mask is honoured in both forms: non-salient weights stay bit-identical (and
the proximal quantile is taken over the salient weights only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.methods.rl import check_labels, forget_label_loss
from salun.methods.saliency import gradient_saliency, kth_largest

log = logging.getLogger(__name__)

FORMS = ("proximal", "saliency")


def soft_scale(scores: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """s = min(1, g / gamma), gamma = the k-th largest score (k = round(ratio * count))."""
    total = sum(s.numel() for s in scores)
    k = max(1, int(round(ratio * total)))
    gamma = float(kth_largest(scores, k))
    if gamma <= 0:  # more than (1 - ratio) of the scores are zero: every nonzero one is "top"
        return [(s > 0).to(s.dtype) for s in scores]
    return [(s / gamma).clamp_(max=1.0) for s in scores]


@torch.no_grad()
def soft_threshold_(params, anchors, free, ratio: float) -> float:
    """In place: theta = theta_o + sign(d) max(|d| - tau, 0) with tau the k-th smallest |d|
    over the free elements, k = floor(ratio * free count). Returns tau."""
    deltas = [(p - a) for p, a in zip(params, anchors, strict=True)]
    mags = [d.abs() if m is None else d.abs()[m] for d, m in zip(deltas, free, strict=True)]
    n = sum(t.numel() for t in mags)
    k = int(math.floor(ratio * n))
    if k <= 0 or n == 0:
        return 0.0
    tau = kth_largest([t.reshape(-1) for t in mags if t.numel()], n - k + 1)
    for p, a, d, m in zip(params, anchors, deltas, free, strict=True):
        soft = a + d.sign() * (d.abs() - tau).clamp_(min=0)
        p.copy_(soft if m is None else torch.where(m, soft, p))
    return float(tau)


@METHODS.register("salun_soft")
@dataclass
class SalUnSoft(Optim):
    epochs: int = 10
    lr: float = 0.013
    form: str = "proximal"  # proximal | saliency
    mask_ratio: float = 0.5  # proximal: initial share pulled back; saliency: gamma's quantile
    labels: str = "all"  # all (per batch, reference) | other (y' != y, per batch) | fixed (table)

    def check(self) -> None:
        super().check()
        if self.form not in FORMS:
            raise SalunError(f"unknown salun_soft form {self.form!r}; allowed: {', '.join(FORMS)}")
        if not 0 < self.mask_ratio <= 1:
            raise SalunError(f"salun_soft.mask_ratio must be in (0, 1], got {self.mask_ratio!r}")
        check_labels(self.labels, "salun_soft")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        self.check()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        if mask is not None:
            mask.check(model)
            hard = [mask.masks[n].to(p.device) for n, p in named]
        anchors = [p.detach().clone() for p in params]

        forget_loss = forget_label_loss(task, data.forget, data.seed, self.labels)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)
        phases = [(forget, forget_loss), (retain, task.loss)]

        if self.form == "proximal":
            total = max(self.epochs * (len(forget) + len(retain)), 1)
            free = hard if mask is not None else [None] * len(params)

            def after_step(step: int) -> None:
                ratio = self.mask_ratio * (1 - step / total)
                tau = soft_threshold_(params, anchors, free, ratio)
                if step == 1:
                    log.debug("SalUn-soft: first threshold %.3e", tau)

        else:
            loader = task.loader(data.forget, self.batch_size, shuffle=False)
            scores, _ = gradient_saliency(model, loader, task, progress=task.progress)
            g = [scores[n] for n, _ in named]
            if mask is not None:  # gamma among the weights the hard mask lets move
                s = soft_scale([t[m] for t, m in zip(g, hard, strict=True)], self.mask_ratio)
                scale = [torch.zeros_like(t) for t in g]
                for out, part, m in zip(scale, s, hard, strict=True):
                    out[m] = part
            else:
                scale = soft_scale(g, self.mask_ratio)
            previous = [a.clone() for a in anchors]

            @torch.no_grad()
            def after_step(step: int) -> None:
                for p, prev, w in zip(params, previous, scale, strict=True):
                    p.copy_(torch.lerp(prev, p, w))
                    prev.copy_(p)

        return fit(model, lambda e: phases, self, mask, task.progress, "SalUn-soft", after_step)
