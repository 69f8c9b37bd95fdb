"""Fisher forgetting: Gaussian noise shaped by the inverse Fisher information of D_r.

Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks", CVPR 2020 (Fisher forgetting); a baseline in Jia et al. (NeurIPS 2023).
Objective (no training): theta <- theta_o + n, n ~ N(0, Sigma), Sigma = (alpha F^{-1})^{1/2}
(the paper's form), with F the diagonal Fisher information of the model on D_r.

Noise is large where the retain data does not constrain a weight (small F) and small where it
does, so what only D_f needed is destroyed while D_r's knowledge survives.

- F = E_{x in D_r} E_{y ~ p_theta(y|x)} [(grad log p_theta(y|x))^2] (the true Fisher under the
  model's own predictive distribution, model in eval mode), estimated with one label per sample
  drawn from p_theta (seeded) and batch-summed gradients:
  F_hat = (1/N) sum_batches (grad sum_{i in batch} log p_theta(y_i|x_i))^2. Unbiased: the
  score has zero mean under p_theta, so cross terms vanish in expectation; ``batch_size`` only
  trades speed for variance (1 gives the per-sample estimator). ``fisher_samples`` caps N
  (a seeded random subset of D_r; 0 = all of it).
- F is clamped to [fisher_min, fisher_max] before inversion (no infinite noise on weights the
  retain data never touches).
- ``form="paper"`` (default): covariance (alpha/F)^{1/2}, i.e. standard deviation
  (alpha/F)^{1/4}. ``form="code"``: variance alpha/F, i.e. standard deviation (alpha/F)^{1/2}, as
  in the authors' released code (which also special-cases the last layer; not done here).
- Noise comes from a CPU ``torch.Generator`` seeded with ``data.seed``: same seed, same model.
  A mask restricts the noise to salient weights (the others stay bit-identical).

Measured on the digits smoke model (class 3, 100 % forget / retain accuracy before): paper form
alpha 1e-9 -> forget 100 / retain 83, 1e-8 -> 100 / 39, 1e-6 -> 23 / 11; code form 1e-7 ->
98 / 89, 5e-7 -> 8 / 25. The noise is not selective there: retain accuracy falls with (or
before) forget accuracy. The per-batch estimator agrees with the per-sample one (batch 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods.saliency import MaskGuard, grad_sums

log = logging.getLogger(__name__)

FORMS = ("paper", "code")


def diagonal_fisher(model, dataset, task, batch_size: int, generator: torch.Generator) -> dict:
    """Diagonal Fisher (model-sampled labels, batch-summed scores), eval mode, by name."""
    model.eval()

    def loss_of(batch):
        x, _, _ = task.batch(batch)
        with torch.no_grad():
            probs = torch.softmax(task.logits(model, x).float(), dim=1).cpu()
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        # task.loss is the mean CE = -mean log p(y|x): scaled by the size, the sum of log-likelihoods
        return task.loss(model, batch, labels=labels), len(labels)

    fisher, count, _ = grad_sums(
        model, task.loader(dataset, batch_size, shuffle=False), loss_of, power=2
    )
    return {n: f / max(count, 1) for n, f in fisher.items()}


@METHODS.register("fisher")
@dataclass
class Fisher:
    alpha: float = 1e-9  # noise scale (search it)
    form: str = "paper"  # paper: std (alpha/F)^(1/4) | code: std (alpha/F)^(1/2)
    fisher_min: float = 1e-6  # F is clamped to [fisher_min, fisher_max]
    fisher_max: float = 1e6
    batch_size: int = 32  # Fisher estimation batches (unbiased for any size; 1 = per sample)
    fisher_samples: int = 0  # retain samples for the Fisher (0 = all)
    accepts_mask: bool = True

    def check(self) -> None:
        if self.form not in FORMS:
            raise SalunError(f"unknown fisher form {self.form!r}; allowed: {', '.join(FORMS)}")
        if not (self.alpha > 0 and 0 < self.fisher_min <= self.fisher_max):
            raise SalunError(
                "fisher needs alpha > 0 and 0 < fisher_min <= fisher_max "
                f"(got alpha={self.alpha}, fisher_min={self.fisher_min}, "
                f"fisher_max={self.fisher_max})"
            )
        if self.batch_size < 1 or self.fisher_samples < 0:
            raise SalunError(
                f"fisher needs batch_size >= 1 and fisher_samples >= 0 "
                f"(got {self.batch_size}, {self.fisher_samples})"
            )

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        self.check()
        require_nonempty(data, forget=False)
        guard = MaskGuard(model, mask)
        g = torch.Generator().manual_seed(data.seed + 15485863)
        retain = data.retain
        n_r = len(retain)  # type: ignore[arg-type]
        if 0 < self.fisher_samples < n_r:
            pick = torch.randperm(n_r, generator=g)[: self.fisher_samples]
            retain = Subset(retain, pick.tolist())
        fisher = diagonal_fisher(model, retain, task, self.batch_size, g)
        power = 0.25 if self.form == "paper" else 0.5
        noise_norm = 0.0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name not in fisher:
                    continue
                f = fisher[name].clamp(self.fisher_min, self.fisher_max)
                std = (self.alpha / f) ** power
                noise = torch.randn(p.shape, generator=g).to(device=p.device, dtype=p.dtype)
                p.add_(noise * std)
                noise_norm += float((noise * std).pow(2).sum())
        guard.after_step()
        log.info("Fisher forgetting: noise norm %.3e (alpha %.3g)", noise_norm**0.5, self.alpha)
        model.eval()
        return model
