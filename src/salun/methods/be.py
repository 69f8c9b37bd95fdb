"""BE: Boundary Expanding.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision
Boundary", CVPR 2023; the BE baseline of SalUn (Fan et al., ICLR 2024).
Objective: min_theta E_{x in D_f} CE(theta, w_s; x, K) over the model widened by one shadow
class K (an extra output row w_s of the last linear layer); the shadow class is then pruned, so
the forget samples fall to whichever of the K real classes is next.

The model is widened without replacing any module: a temporary parameter (the shadow row, and a
shadow bias when the layer has one) is registered on the last ``nn.Linear`` of the model, and a
forward hook appends the shadow logit to that layer's output. Both are removed before returning,
whatever happens, so the returned model has its original K outputs and exactly its original
parameters (names, shapes, objects): the evaluated model never sees the extra class (a pitfall
of the reference code). The shadow row starts as the mean of the K class rows (deterministic;
the reference uses a fresh random row). A saliency mask applies to the original parameters; the
shadow row is always trainable.
Defaults: 10 epochs, SGD momentum 0.9, lr 1e-4 (Chen et al. use 1e-5; search the lr: with a
D_f of one batch, as in the digits smoke preset, 1e-4 barely moves it and 5e-4 forgets it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit
from salun.methods.saliency import SaliencyMask

log = logging.getLogger(__name__)

SHADOW_WEIGHT = "shadow_weight"
SHADOW_BIAS = "shadow_bias"


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the last ``nn.Linear`` in ``model.modules()`` order."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise SalunError("method 'be' needs a model whose output layer is an nn.Linear; none found")
    return found


class ShadowClass:
    """Context manager: one extra output logit on ``layer``, gone again on exit."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> ShadowClass:
        layer = self.layer
        with torch.no_grad():
            weight = layer.weight.detach().mean(0, keepdim=True).clone()
            bias = None if layer.bias is None else layer.bias.detach().mean(0, keepdim=True).clone()
        layer.register_parameter(SHADOW_WEIGHT, nn.Parameter(weight))
        if bias is not None:
            layer.register_parameter(SHADOW_BIAS, nn.Parameter(bias))

        def hook(module, inputs, output):
            shadow = F.linear(
                inputs[0], getattr(module, SHADOW_WEIGHT), getattr(module, SHADOW_BIAS, None)
            )
            return torch.cat([output, shadow], dim=-1)

        self.handle = layer.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
        for name in (SHADOW_WEIGHT, SHADOW_BIAS):
            self.layer._parameters.pop(name, None)


@METHODS.register("be")
@dataclass
class BE(Optim):
    epochs: int = 10
    lr: float = 1e-4

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=False)
        self.check()
        name, layer = last_linear(model)
        if layer.out_features != task.num_classes:
            raise SalunError(
                f"method 'be': the last linear layer {name!r} has {layer.out_features} outputs, "
                f"the task has {task.num_classes} classes"
            )
        if mask is not None:
            mask.check(model)
        prefix = f"{name}." if name else ""
        shadow_label = task.num_classes

        def loss(model, batch):
            labels = torch.full((len(batch[1]),), shadow_label, dtype=torch.long)
            return task.loss(model, batch, labels=labels)

        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        with ShadowClass(layer):
            widened = None
            if mask is not None:
                extra = {
                    prefix + n: torch.ones(p.shape, dtype=torch.bool)
                    for n, p in layer.named_parameters(recurse=False)
                    if n in (SHADOW_WEIGHT, SHADOW_BIAS)
                }
                widened = SaliencyMask({**mask.masks, **extra}, dict(mask.meta))
            fit(model, lambda e: [(forget, loss)], self, widened, task.progress, "BE")
        model.eval()
        return model
