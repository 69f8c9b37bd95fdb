"""Input normalisation stored inside the model as buffers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from salun.core.errors import SalunError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with mean and std held as persistent buffers.

    Keeping normalisation inside the model means saved weights carry their input statistics, and
    attacks or evaluations can feed raw ``[0, 1]`` images. The statistics are buffers, not
    parameters, so no optimiser (or saliency mask) ever touches them.

    Args:
        in_channels: Number of input channels ``C``.
        mean: Per-channel mean, length ``C`` (or 1, broadcast). Defaults to 0.5 per channel.
        std: Per-channel standard deviation, length ``C`` (or 1). Defaults to 0.5 per channel.

    Raises:
        SalunError: If a statistic has the wrong length or a std is not positive.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        mean_t = _channel_stats("mean", mean, in_channels)
        std_t = _channel_stats("std", std, in_channels)
        if bool((std_t <= 0).any()):
            raise SalunError(f"normalisation std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t, persistent=True)
        self.register_buffer("std", std_t, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch shaped ``(N, C, H, W)``."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _channel_stats(kind: str, values: Sequence[float] | None, channels: int) -> torch.Tensor:
    """Turn per-channel statistics into a fresh contiguous ``(1, C, 1, 1)`` float tensor."""
    vals = [0.5] * channels if values is None else [float(v) for v in values]
    if len(vals) == 1 and channels != 1:
        vals = vals * channels
    if len(vals) != channels:
        raise SalunError(
            f"normalisation {kind} has {len(vals)} values but the model has {channels} channels"
        )
    return torch.tensor(vals, dtype=torch.float32).reshape(1, channels, 1, 1).contiguous()
