"""CF-k: catastrophic forgetting of the last k layers.

Goel, Prabhu, Sanyal, Lim, Torr, Kumaraguru, "Towards Adversarial Evaluation of Unlearning
Algorithms" (arXiv 2201.06640, 2022). Objective: min over the last k layers of
E_{D_r} CE(theta; x, y), every other parameter frozen at theta_o.

What a "layer" is here (generic, never by model type): a module that owns parameters
directly (``module.parameters(recurse=False)`` is non-empty: Linear, Conv, BatchNorm, ...),
counted in ``model.modules()`` order, i.e. registration order. The last ``k`` of them are
trained. For the small CNN (k=2) that is ``hidden`` and ``fc``; for a torchvision-style
ResNet-18 it is the last BatchNorm of ``layer4`` and ``fc``. ``k`` = 2 is this project's
default; Goel et al. sweep k, and the SCRUB authors' code (Kurmanji et al., NeurIPS 2023)
trains ResNet's whole last stage (lr 0.01, 10 epochs), which is a larger k.

Freezing is enforced with a :class:`SaliencyMask` that is True only on the last k layers,
ANDed with any user mask, so :class:`MaskGuard` keeps everything else bit-identical through
weight decay and momentum; frozen parameters are also taken out of the optimizer. With
``freeze_norm_stats`` (default) the frozen layers' running statistics (BatchNorm buffers)
are frozen too (those modules run in eval mode), so the whole frozen part of the network is
bit-identical; set it to False to let ``model.train()`` update them, as plain fine-tuning
code does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.methods.saliency import SaliencyMask


def parameterised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters directly, in ``model.modules()`` order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]


def last_layers(model: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    layers = parameterised_layers(model)
    if not 1 <= k <= len(layers):
        raise SalunError(f"k must be between 1 and {len(layers)} (layers of this model), got {k}")
    return layers[-k:]


def layer_mask(model: nn.Module, k: int, mask: SaliencyMask | None = None) -> SaliencyMask:
    """True on the parameters of the last ``k`` layers, ANDed with ``mask`` when given."""
    if mask is not None:
        mask.check(model)
    chosen = {id(p) for _, m in last_layers(model, k) for p in m.parameters(recurse=False)}
    masks = {}
    for name, p in model.named_parameters():
        on = torch.full(p.shape, id(p) in chosen, dtype=torch.bool)
        masks[name] = on & mask.get(name, p).cpu().bool() if mask is not None else on
    return SaliencyMask(masks, meta={"layers": k, "user_mask": mask is not None})


@contextmanager
def frozen_outside(model: nn.Module, mask: SaliencyMask) -> Iterator[None]:
    """Take parameters with no selected element out of autograd (and so out of the optimizer)
    for the duration; restore their ``requires_grad`` afterwards."""
    saved = {}
    for name, p in model.named_parameters():
        saved[name] = p.requires_grad
        if not bool(mask.get(name, p).any()):
            p.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])


def stats_keeper(model: nn.Module, trainable: list[nn.Module]):
    """A function that puts frozen modules holding buffers (e.g. BatchNorm) in eval mode, so
    their running statistics stay as they are while the trainable layers learn."""
    keep = {id(m) for m in trainable}
    frozen = [
        m
        for m in model.modules()
        if id(m) not in keep and any(True for _ in m.buffers(recurse=False))
    ]

    def apply() -> None:
        for m in frozen:
            m.training = False

    return apply


def train_last_layers(method, model, data: UnlearnData, task, mask, desc: str):
    """Fine-tune only the last ``method.k`` layers (ANDed with ``mask``) on D_r."""
    trainable = [m for _, m in last_layers(model, method.k)]
    guard_mask = layer_mask(model, method.k, mask)
    if guard_mask.selected == 0:
        raise SalunError(f"{desc}: the mask selects no weight in the last {method.k} layers")
    retain = task.loader(data.retain, method.batch_size, True, data.seed)
    keep_stats = stats_keeper(model, trainable) if method.freeze_norm_stats else None

    def loss(model, batch):
        if keep_stats is not None:
            keep_stats()
        return task.loss(model, batch)

    with frozen_outside(model, guard_mask):
        return fit(model, lambda e: [(retain, loss)], method, guard_mask, task.progress, desc)


@METHODS.register("cf_k")
@dataclass
class CFk(Optim):
    epochs: int = 10
    lr: float = 0.01
    k: int = 2  # last k parameterised modules (see the module docstring)
    freeze_norm_stats: bool = True

    def check(self) -> None:
        super().check()
        if self.k < 1:
            raise SalunError(f"k must be >= 1 (number of last layers to train), got {self.k}")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, forget=False)
        return train_last_layers(self, model, data, task, mask, "CF-k")
