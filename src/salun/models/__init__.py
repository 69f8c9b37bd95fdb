"""Image classifiers for unlearning: ResNet-18, VGG-16-BN and a small CNN.

Every model starts with a :class:`Normalize` module (attribute ``normalize``) whose mean and std
are buffers, so models take raw ``[0, 1]`` images and saved weights carry their statistics. The
last linear layer is always named ``fc``.

References:
    He, Zhang, Ren & Sun (2016), "Deep Residual Learning for Image Recognition" (ResNet).
    Simonyan & Zisserman (2015), "Very Deep Convolutional Networks for Large-Scale Image
    Recognition" (VGG).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from salun.core.errors import SalunError
from salun.core.registry import MODELS  # names accepted by build_model (a registry)
from salun.models.cnn import SmallCNN
from salun.models.normalize import Normalize
from salun.models.resnet import ResNet18
from salun.models.vgg import VGG16BN


@MODELS.register("resnet18")
def _resnet18(num_classes, in_channels, image_size, width, mean, std) -> nn.Module:
    return ResNet18(num_classes, in_channels, width, mean, std)


@MODELS.register("vgg16_bn")
def _vgg16_bn(num_classes, in_channels, image_size, width, mean, std) -> nn.Module:
    return VGG16BN(num_classes, in_channels, image_size, width, mean, std)


@MODELS.register("cnn")
def _cnn(num_classes, in_channels, image_size, width, mean, std) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width, mean, std)


__all__ = ["MODELS", "Normalize", "ResNet18", "SmallCNN", "VGG16BN", "build_model"]


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build a classifier by name.

    Args:
        name: One of :data:`MODELS`: ``"resnet18"`` (He et al., 2016, CIFAR stem),
            ``"vgg16_bn"`` (Simonyan & Zisserman, 2015, with BatchNorm) or ``"cnn"``.
        num_classes: Number of output logits.
        in_channels: Input image channels.
        image_size: Input height/width (at least 8); VGG uses it to drop surplus max-pools.
        width: Base channel count (64 gives the standard ResNet-18 / VGG-16 sizes).
        mean: Per-channel input mean (default 0.5 per channel).
        std: Per-channel input std (default 0.5 per channel).

    Returns:
        A module mapping images ``(N, in_channels, H, W)`` to logits ``(N, num_classes)``.

    Raises:
        SalunError: For an unknown name or a non-positive / too small size argument.
    """
    builder = MODELS.get(name)  # unknown names fail here, listing the registered ones
    for arg, value, low in (
        ("num_classes", num_classes, 1),
        ("in_channels", in_channels, 1),
        ("image_size", image_size, 8),
        ("width", width, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SalunError(f"model {arg} must be an integer >= {low}, got {value!r}")
    return builder(num_classes, in_channels, image_size, width, mean, std)


def reinitialise(model: nn.Module, seed: int) -> set[str]:
    """Re-initialise ``model`` in place under ``torch.manual_seed(seed)``: every submodule's
    ``reset_parameters`` (or ``_reset_parameters``) and fresh normalisation statistics.

    Returns the names of the modules that were reset (parameters of other modules keep their
    values). Used by Retrain, Bad Teacher and the ZRF evaluator.
    """
    torch.manual_seed(seed)
    reset: set[str] = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            init = getattr(module, "reset_parameters", None) or getattr(
                module,
                "_reset_parameters",
                None,  # e.g. nn.MultiheadAttention
            )
            if callable(init):
                init()
                reset.add(name)
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.reset_running_stats()
    return reset
