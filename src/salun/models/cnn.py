"""A small, fast CNN for tests and CPU demos.

Two conv-BN-ReLU pairs per block, two blocks each ending in a 2x2 max-pool, average
pooling to 4x4 and a two-layer MLP head whose final layer is named ``fc``. Not from a paper; it stands in
for ResNet-18 (He et al., 2016) and VGG-16 (Simonyan & Zisserman, 2015) where speed matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from salun.models.normalize import Normalize


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """Four 3x3 convs (``w, w, 2w, 2w``) with two max-pools and an MLP head (``2w*4*4 -> 4w -> K``).

    Args:
        num_classes: Number of output logits.
        in_channels: Input image channels.
        width: Channels of the first block (16 or 32 are typical).
        mean: Per-channel input mean for the built-in :class:`Normalize`.
        std: Per-channel input std for the built-in :class:`Normalize`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels, mean, std)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
        )
        # Pooling to 4x4 (not 1x1) keeps spatial detail so the model can fit its training set.
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.hidden = nn.Linear(2 * width * 16, 4 * width)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        x = torch.flatten(self.avgpool(self.features(self.normalize(x))), 1)
        return self.fc(self.relu(self.hidden(x)))
