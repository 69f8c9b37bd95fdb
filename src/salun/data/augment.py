"""Training-time augmentation of the SalUn reference protocol for CIFAR-10/100 and SVHN:
random crop with 4-pixel zero padding and a random horizontal flip (``data.augment: true``).

Applied per sample when the original model and Retrain are trained (their loaders only);
evaluation, mask computation and unlearning see the images unchanged. Random draws come from
torch's global generator, which the pipeline seeds, so a seed gives the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class Augmented(Dataset):
    """Wrap a dataset of ``(image [C, H, W], label, ...)``: random crop (pad ``padding``) + flip."""

    def __init__(self, dataset: Dataset, padding: int = 4, flip: bool = True) -> None:
        self.dataset, self.padding, self.flip = dataset, padding, flip
        self.labels = getattr(dataset, "labels", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return (augment(item[0], self.padding, self.flip), *item[1:])


def augment(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """One random crop of the zero-padded image at its own size, flipped with probability 1/2."""
    h, w = x.shape[-2:]
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
        top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
        x = x[..., top : top + h, left : left + w]
    if flip and bool(torch.rand(()) < 0.5):
        x = x.flip(-1)
    return x
