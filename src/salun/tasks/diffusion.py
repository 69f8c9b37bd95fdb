"""Objectives shared by the diffusion tasks (class-conditional DDPM and text-to-image): the
relabelled noise-prediction loss of SalUn for diffusion (Fan et al., ICLR 2024, eq. 10) and the
fixed-draw loss used to compare two models on the same noise."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


def target_model(task, model: nn.Module) -> nn.Module:
    """The model that gives relabelling targets: ``model`` itself (``target="current"``) or a
    frozen copy snapshotted at the first relabelled step (``"frozen"``). Shared by the diffusion
    tasks (class-conditional DDPM, text-to-image); ``task`` keeps the snapshot in ``_frozen``."""
    if task.target == "current":
        return model
    if task._frozen is None or task._frozen[0] is not model:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        task._frozen = (model, frozen)
    return task._frozen[1]


def relabelled_mse(task, model: nn.Module, x_t, t, y, labels: torch.Tensor) -> torch.Tensor:
    """SalUn's relabelled objective ||eps_theta(x_t, c) - sg eps(x_t, c')||^2 (Fan et al., ICLR
    2024, eq. 9), the target predicted by :func:`target_model` under the relabelled condition."""
    source = target_model(task, model)
    with torch.no_grad():
        target = task.predict(source, x_t, t, labels.to(task.device))
    return F.mse_loss(task.predict(model, x_t, t, y), target)


@torch.no_grad()
def fixed_draw_loss(task: Any, model: nn.Module, dataset: Dataset, batch_size: int) -> float:
    """Mean ``task.forget_loss`` over ``dataset`` with one fixed draw of timesteps and noise
    (``task.generator`` reseeded to 12345, then restored), so two models or two epochs are
    compared on the same noise. Shared by the diffusion tasks (class-conditional DDPM and
    text-to-image)."""
    was_training = model.training
    model.eval()
    saved = task.generator.get_state()
    task.generator.manual_seed(12345)
    total, n = 0.0, 0
    try:
        for b in task.loader(dataset, batch_size, False):
            total += float(task.forget_loss(model, b)) * len(b[1])
            n += len(b[1])
    finally:
        task.generator.set_state(saved)
        model.train(was_training)
    return total / max(n, 1)
