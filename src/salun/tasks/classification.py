"""Image classification task: losses, relabelling and data plumbing used by every method.

Methods never branch on the model family; they call ``task.loss``, ``task.forget_loss`` and
``task.relabel``. Batches are ``(inputs, labels, positions)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class WithPositions(Dataset):
    """Wrap any dataset yielding ``(x, y, ...)`` so items are ``(x, y, position)``.

    Position is the item's index in the wrapped dataset; methods key per-sample state
    (e.g. fixed random labels) on it.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return item[0], torch.as_tensor(item[1], dtype=torch.long), i


def position_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A loader of ``(x, y, position)`` batches, shuffled by a generator seeded with ``seed``.

    Under torch.distributed a shuffled loader is sharded: the ranks draw the single-process
    order from the same generator and each takes its share of every global batch.
    """
    from salun import distributed

    g = torch.Generator().manual_seed(seed)
    data = dataset if isinstance(dataset, WithPositions) else WithPositions(dataset)
    if shuffle and distributed.is_dist():
        # the single-process order, each rank taking its share of every global batch
        order = torch.utils.data.RandomSampler(data, generator=g)
        batches = distributed.GlobalBatchSampler(order, batch_size, drop_last)
        return DataLoader(data, batch_sampler=batches, generator=g)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g if shuffle else None,
        drop_last=drop_last,
    )


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a dataset, in order (uses ``dataset.labels`` when it has them)."""
    labels = getattr(dataset, "labels", None)
    if torch.is_tensor(labels) and len(labels) == len(dataset):  # type: ignore[arg-type]
        return labels.long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class ClassificationTask:
    """Cross-entropy classification over ``num_classes`` classes."""

    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    channels_last: bool = False
    name: str = "classification"

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, pos = batch[0], batch[1], batch[2]
        return self.inputs(x), y.to(self.device), torch.as_tensor(pos)

    def loss(self, model: nn.Module, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean CE of ``model`` on the batch, against ``labels`` (default: the true labels)."""
        x, y, _ = self.batch(batch)
        return F.cross_entropy(model(x), y if labels is None else labels.to(self.device))

    def forget_loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Forgetting loss used for weight saliency: -CE on the forget data (SalUn eq. 5)."""
        return -self.loss(model, batch)

    def relabel(
        self, labels: torch.Tensor, generator: torch.Generator, exclude_true: bool = False
    ) -> torch.Tensor:
        """Random labels: uniform over all classes, or over the other classes when
        ``exclude_true`` (the paper's y' != y)."""
        labels = labels.cpu()
        if not exclude_true:
            return torch.randint(0, self.num_classes, labels.shape, generator=generator)
        shift = torch.randint(1, self.num_classes, labels.shape, generator=generator)
        return (labels + shift) % self.num_classes

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        return position_loader(dataset, batch_size, shuffle, seed, drop_last)

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        return dataset_labels(dataset)
