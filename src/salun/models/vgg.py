"""VGG-16 with batch norm (Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition").

Channel counts scale with ``width / 64``; a max-pool is only kept while the feature map is at
least 2x2, so the network also runs on 8x8, 16x16 or 28x28 inputs. Features are globally
average-pooled and classified by a single linear head named ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from salun.models.normalize import Normalize

#: VGG-16 configuration D: conv output channels (at width 64), ``"M"`` for a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16BN(nn.Module):
    """VGG-16 with BatchNorm after every conv (Simonyan & Zisserman, 2015).

    Args:
        num_classes: Number of output logits.
        in_channels: Input image channels.
        image_size: Input height/width, used to drop max-pools that would shrink below 1x1.
        width: Channels of the first block; every layer scales by ``width / 64``.
        mean: Per-channel input mean for the built-in :class:`Normalize`.
        std: Per-channel input std for the built-in :class:`Normalize`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels, mean, std)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for v in VGG16_CFG:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            out = max(1, int(v) * width // 64)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        x = self.features(self.normalize(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))
