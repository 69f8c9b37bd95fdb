"""Bad Teacher: distil from a competent teacher on D_r and an incompetent one on D_f.

Chundawat, Tarun, Mandal, Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep
Networks using an Incompetent Teacher", AAAI 2023 (arXiv 2205.08096). The student starts at the
original model; the competent teacher is a frozen copy of it; the incompetent teacher is a
randomly initialised copy (every module's ``reset_parameters`` after
``torch.manual_seed(data.seed)``). Objective, per sample of the mixed set D_f + S_r:
    min_theta  KL(softmax(T_s(x) / tau) || softmax(f_theta(x) / tau)),
T_s = incompetent teacher for x in D_f, competent teacher for x in S_r, where S_r is a seeded
random ``retain_fraction`` of D_r (the paper uses 30 %).

D_f and S_r are concatenated and shuffled into one loader, so a batch mixes both kinds, as in
the authors' code. Defaults are the authors': 1 epoch, Adam lr 1e-4, batch 256, tau = 1. The KL
is averaged per sample ("batchmean"); the authors' code uses PyTorch's elementwise mean, which
is the same divided by the number of classes (immaterial under Adam up to its epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Subset

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.methods.scrub import frozen_copy
from salun.models import reinitialise


def retain_subset(retain, fraction: float, seed: int) -> Subset:
    """A seeded random ``fraction`` of the retain set (at least one sample)."""
    n = len(retain)
    count = max(1, int(round(fraction * n)))
    g = torch.Generator().manual_seed(seed + 104729)
    return Subset(retain, torch.randperm(n, generator=g)[:count].tolist())


@METHODS.register("bad_teacher")
@dataclass
class BadTeacher(Optim):
    epochs: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 256
    T: float = 1.0  # KL temperature
    retain_fraction: float = 0.3  # share of D_r distilled from the competent teacher

    def check(self) -> None:
        super().check()
        if not 0.0 < self.retain_fraction <= 1.0 or self.T <= 0:
            raise SalunError(
                f"bad_teacher needs retain_fraction in (0, 1] and T > 0 (got "
                f"retain_fraction={self.retain_fraction}, T={self.T})"
            )

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        competent = frozen_copy(model)
        incompetent = frozen_copy(model)
        reinitialise(incompetent, data.seed)  # random weights, fresh BatchNorm statistics
        n_forget = len(data.forget)  # type: ignore[arg-type]
        subset = retain_subset(data.retain, self.retain_fraction, data.seed)
        mixed: ConcatDataset = ConcatDataset([data.forget, subset])
        loader = task.loader(mixed, self.batch_size, True, data.seed)

        def loss(model, batch):
            x, _, pos = task.batch(batch)
            is_forget = (pos < n_forget).to(x.device)
            logits = None
            with torch.no_grad():  # teachers in eval mode: per-sample outputs, so split freely
                for teacher, rows in ((incompetent, is_forget), (competent, ~is_forget)):
                    if bool(rows.any()):
                        out = task.logits(teacher, x[rows]).float()
                        if logits is None:
                            logits = out.new_zeros((len(x), out.shape[1]))
                        logits[rows] = out
                assert logits is not None  # a batch is never empty
                target = F.log_softmax(logits / self.T, dim=1)
            student = F.log_softmax(task.logits(model, x).float() / self.T, dim=1)
            return F.kl_div(student, target, reduction="batchmean", log_target=True)

        return fit(model, lambda e: [(loader, loss)], self, mask, task.progress, "BadTeacher")
