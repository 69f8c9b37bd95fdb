"""Image classification task: losses, relabelling and data plumbing used by every method.

Methods never branch on the model family; they call ``task.loss``, ``task.forget_loss``,
``task.relabel`` and, for logits, ``task.logits(model, x)`` (never ``model(x)``). Batches are
``(inputs, labels, positions)``.

Adapters for the models and data people have (used by the Python API):
- output adapter (:func:`output_logits`): a tensor, an object with ``.logits`` (Hugging Face
  outputs), a mapping with ``"logits"``, the first element of a tuple, or a user ``output_fn``;
- batch adapter (:class:`BatchAdapter`): ``(x, y, ...)`` tuples or lists, or dicts whose input
  and label keys are configurable (defaults tried in order: ``image``, ``pixel_values``,
  ``input``, ``x`` and ``label``, ``labels``, ``y``);
- a user's DataLoader is used as it is (its ``collate_fn``, sampler and workers): register it
  with :meth:`ClassificationTask.use_loader` and ``task.loader`` returns it, adapted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from salun.tasks.batches import (
    AdaptedLoader,
    BatchAdapter,
    dataset_labels,
    output_logits,
    position_loader,
)

log = logging.getLogger(__name__)


@dataclass
class ClassificationTask:
    """Cross-entropy classification over ``num_classes`` classes.

    ``dtype``: floating inputs are cast to it (the model's dtype, e.g. bf16); ``output_fn`` and
    ``adapter``: see the module docstring. The loss is computed in fp32 whatever the logits'
    dtype.
    """

    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    channels_last: bool = False
    name: str = "classification"
    dtype: torch.dtype | None = None
    output_fn: Callable[[Any], torch.Tensor] | None = None
    adapter: BatchAdapter = field(default_factory=BatchAdapter)
    user_loaders: dict[int, Iterable] = field(default_factory=dict, repr=False, compare=False)
    #: a BatchNorm layer of the model that cannot train on a batch of one item (set by the
    #: Python API's checks): shuffled (training) loaders then drop a last batch of one item
    single_item_batchnorm: str | None = None

    def use_loader(self, dataset: Dataset, loader: Iterable) -> None:
        """Have ``task.loader(dataset, ...)`` return the user's ``loader`` as it is."""
        self.user_loaders[id(dataset)] = loader

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.dtype is not None and x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, y, pos = self.adapter.split(batch)
        y = torch.as_tensor(y).to(self.device)
        return self.inputs(x), y, None if pos is None else torch.as_tensor(pos)

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's logits on inputs ``x`` (through the output adapter)."""
        return output_logits(model(x), self.output_fn)

    def loss(self, model: nn.Module, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean CE of ``model`` on the batch, against ``labels`` (default: the true labels)."""
        x, y, _ = self.batch(batch)
        logits = self.logits(model, x)
        return F.cross_entropy(logits.float(), y if labels is None else labels.to(self.device))

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
    ) -> Any:
        """Batches of ``(x, y, position)``; a registered user loader as it is (positions None)."""
        user = self.user_loaders.get(id(dataset))
        if user is not None:
            return AdaptedLoader(user, self.adapter)
        if self.single_item_batchnorm and shuffle and len(dataset) % batch_size == 1:  # type: ignore[arg-type]
            drop_last = True
            log.info(
                "dropping the last batch of one item in each epoch (%d items, batch size %d): "
                "BatchNorm layer %r cannot train on one item",
                len(dataset),  # type: ignore[arg-type]
                batch_size,
                self.single_item_batchnorm,
            )
        return position_loader(dataset, batch_size, shuffle, seed, drop_last, self.adapter)

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        return dataset_labels(dataset, self.adapter)
