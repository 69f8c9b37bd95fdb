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

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from salun.errors import SalunError

INPUT_KEYS = ("image", "pixel_values", "input", "x")
LABEL_KEYS = ("label", "labels", "y")


def output_logits(out: Any, output_fn: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """The logits in a model's output: ``output_fn(out)`` when given, else the tensor itself,
    ``out.logits``, ``out["logits"]`` or the first element of a tuple/list."""
    if output_fn is not None:
        out = output_fn(out)
    if torch.is_tensor(out):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(out, tuple | list) and out and torch.is_tensor(out[0]):
        return out[0]
    raise SalunError(
        f"cannot find logits in the model's output ({type(out).__name__}); allowed: a tensor, "
        "an object with .logits, a tuple whose first element is the logits, or pass output_fn"
    )


def _pick(item: Mapping, key: str | None, defaults: tuple[str, ...], what: str) -> Any:
    keys = (key,) if key is not None else defaults
    for k in keys:
        if k in item:
            return item[k]
    raise SalunError(
        f"dict item has no {what} key; looked for {', '.join(map(repr, keys))}, it has "
        f"{', '.join(map(repr, list(item)[:6]))} (pass {what}_key=...)"
    )


@dataclass(frozen=True)
class BatchAdapter:
    """Reads ``(input, label[, position])`` from an item or a batch: tuples/lists or dicts."""

    input_key: str | None = None
    label_key: str | None = None

    def split(self, item: Any) -> tuple[Any, Any, Any]:
        """``(x, y, position or None)`` of one item or one collated batch."""
        if isinstance(item, Mapping):
            x = _pick(item, self.input_key, INPUT_KEYS, "input")
            y = _pick(item, self.label_key, LABEL_KEYS, "label")
            return x, y, item.get("position")
        if isinstance(item, tuple | list) and len(item) >= 2:
            return item[0], item[1], item[2] if len(item) > 2 else None
        raise SalunError(
            f"items must be (input, label, ...) tuples or dicts with input and label keys; "
            f"got {type(item).__name__}"
        )


def require_positions(pos: Any, method: str) -> torch.Tensor:
    """``pos`` as a tensor, or a one-line error when the batch has none (a user's DataLoader)."""
    if pos is None:
        raise SalunError(
            f"{method} keys per-sample state on sample positions, which a DataLoader passed as "
            "it is does not give; pass its Dataset instead"
        )
    return torch.as_tensor(pos)


class WithPositions(Dataset):
    """Wrap any dataset yielding ``(x, y, ...)`` or dicts so items are ``(x, y, position)``.

    Position is the item's index in the wrapped dataset; methods key per-sample state
    (e.g. fixed random labels) on it.
    """

    def __init__(self, dataset: Dataset, adapter: BatchAdapter | None = None) -> None:
        self.dataset = dataset
        self.adapter = adapter or BatchAdapter()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y, _ = self.adapter.split(self.dataset[i])
        return x, torch.as_tensor(y, dtype=torch.long), i


class AdaptedLoader:
    """A user's DataLoader, iterated as it is, its batches read by a :class:`BatchAdapter`.

    Batches come out as ``(x, y, None)``: the loader's own sampler decides the order, so sample
    positions are unknown (methods that key state on positions refuse such a loader).
    Attributes (``dataset``, ``batch_size``, ``sampler``, ...) are the loader's.
    """

    def __init__(self, loader: Iterable, adapter: BatchAdapter) -> None:
        self.loader = loader
        self.adapter = adapter

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        for batch in self.loader:
            yield self.adapter.split(batch)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "adapter"):  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


def position_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    adapter: BatchAdapter | None = None,
) -> DataLoader:
    """A loader of ``(x, y, position)`` batches, shuffled by a generator seeded with ``seed``.

    Under torch.distributed a shuffled loader is sharded: the ranks draw the single-process
    order from the same generator and each takes its share of every global batch.
    """
    from salun import distributed

    g = torch.Generator().manual_seed(seed)
    data = dataset if isinstance(dataset, WithPositions) else WithPositions(dataset, adapter)
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


def dataset_labels(dataset: Dataset, adapter: BatchAdapter | None = None) -> torch.Tensor:
    """All labels of a dataset, in order (uses ``dataset.labels`` when it has them)."""
    labels = getattr(dataset, "labels", None)
    if torch.is_tensor(labels) and len(labels) == len(dataset):  # type: ignore[arg-type]
        return labels.long()
    split = (adapter or BatchAdapter()).split
    return torch.tensor([int(split(dataset[i])[1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        return position_loader(dataset, batch_size, shuffle, seed, drop_last, self.adapter)

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        return dataset_labels(dataset, self.adapter)
