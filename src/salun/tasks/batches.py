"""Batches and loaders shared by every task: the output and batch adapters, datasets that carry
each example's position, and the device a task runs on.

Every task yields batches ``(inputs, labels, positions)``; the positions let a method keep a
per-example record (random labels drawn once, per-example weights) whatever the loader's order.
- output adapter (:func:`output_logits`): a tensor, an object with ``.logits`` (Hugging Face
  outputs), a mapping with ``"logits"``, the first element of a tuple, or a user ``output_fn``;
- batch adapter (:class:`BatchAdapter`): ``(x, y, ...)`` tuples or lists, or dicts whose input
  and label keys are configurable (defaults tried in order: ``image``, ``pixel_values``,
  ``input``, ``x`` and ``label``, ``labels``, ``y``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from salun.core.errors import SalunError

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
    from salun.core import distributed

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
