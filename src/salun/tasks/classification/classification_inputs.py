"""Checks of a user's classifier and data for the Python API (:mod:`salun.api`).

Everything here runs before any training or evaluation and fails with a one-line
:class:`~salun.core.errors.SalunError` naming the bad value and what is allowed: datasets that
are not map-style (generators, IterableDatasets), a ``__len__`` that promises more items than
``__getitem__`` gives, empty sets, wrong shapes and dtypes, non-finite inputs or outputs, labels
out of range, a model on the meta device or with nothing to train, forget and retain sets that
share items, and batches a BatchNorm layer cannot train on.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from salun.core.errors import SalunError
from salun.tasks.batches import BatchAdapter, output_logits
from salun.tasks.classification.classification_objective import ClassificationTask

#: Model dtypes whose inputs are cast to them (other dtypes must match the inputs').
LOW_PRECISION = (torch.bfloat16, torch.float16)


def as_dataset(data: Dataset | DataLoader, what: str) -> Dataset:
    ds = data.dataset if isinstance(data, DataLoader) else data
    if (
        isinstance(ds, IterableDataset)
        or not hasattr(ds, "__getitem__")
        or not hasattr(ds, "__len__")
    ):
        inner = " over an IterableDataset" if ds is not data else ""
        raise SalunError(
            f"{what} must be a map-style Dataset (with __len__ and __getitem__) or a DataLoader "
            f"over one, got {type(data).__name__}{inner}"
        )
    return ds


def _read(ds: Dataset, i: int, what: str) -> Any:
    """Item ``i`` of ``ds``; a dataset whose ``__len__`` promises more than it holds fails here."""
    try:
        item = ds[i]
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise SalunError(
            f"{what} item {i} cannot be read although len({what}) = {len(ds)} "  # type: ignore[arg-type]
            f"({type(e).__name__}: {first}); __len__ must match the items __getitem__ returns"
        ) from None
    if item is None:
        raise SalunError(
            f"{what} item {i} is None although len({what}) = {len(ds)}; "  # type: ignore[arg-type]
            "__len__ must match the items __getitem__ returns"
        )
    return item


def _split(item: Any, adapter: BatchAdapter, what: str) -> tuple[Any, Any]:
    if not isinstance(item, dict | tuple | list) or (
        isinstance(item, tuple | list) and len(item) < 2
    ):
        raise SalunError(
            f"{what} items must be (input, label, ...) tuples or dicts; got {type(item).__name__}"
        )
    try:
        x, y, _ = adapter.split(item)
    except SalunError as e:
        raise SalunError(f"{what}: {e}") from None
    return x, y


def _first_input(
    data: Dataset | DataLoader, adapter: BatchAdapter, what: str
) -> tuple[torch.Tensor, Any]:
    """One input of ``data`` with a batch dimension, and the labels that came with it (a
    loader's first batch, as it collates)."""
    if isinstance(data, DataLoader):
        try:
            batch = next(iter(data))
        except StopIteration:
            raise SalunError(f"{what} DataLoader yields no batches") from None
        x, y = _split(batch, adapter, what)
        if not torch.is_tensor(x):
            raise SalunError(f"{what} batches must hold input tensors, got {type(x).__name__}")
        return x[:1], y
    x, y = _split(_read(data, 0, what), adapter, what)
    if not torch.is_tensor(x):
        raise SalunError(f"{what} inputs must be tensors, got {type(x).__name__}")
    return x[None], y


def _check_inputs_finite(x: torch.Tensor, what: str, first: int = 0) -> None:
    if x.is_floating_point() and not bool(x.isfinite().all()):
        i = first + int(torch.nonzero(~x.reshape(len(x), -1).isfinite().all(1))[0])
        raise SalunError(f"{what} input {i} is not finite (NaN or inf); clean the data first")


def _labels(dataset: Dataset, adapter: BatchAdapter, what: str) -> torch.Tensor:
    """Every label of ``dataset`` as int64 (cheap for TensorDataset and salun datasets); the
    inputs read on the way (and a TensorDataset's) must be finite."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        _check_inputs_finite(dataset.tensors[0], what)
        raw: Any = dataset.tensors[1]
    elif torch.is_tensor(getattr(dataset, "labels", None)):
        raw = dataset.labels  # type: ignore[attr-defined]
        _read(dataset, len(dataset) - 1, what)  # type: ignore[arg-type]  # __len__ vs the items
    else:
        raw = []
        for i in range(len(dataset)):  # type: ignore[arg-type]
            x, y = _split(_read(dataset, i, what), adapter, what)
            if torch.is_tensor(x):
                _check_inputs_finite(x[None], what, i)
            raw.append(y)
    try:
        labels = torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError):
        raise SalunError(f"{what} labels must be integers") from None
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise SalunError(
            f"{what} labels must be integer class indices (one per item), got dtype "
            f"{labels.dtype} and shape {tuple(labels.shape)}"
        )
    return labels.long()


def _check_labels(labels: torch.Tensor, n_out: int, what: str) -> None:
    bad = labels[(labels < 0) | (labels >= n_out)]
    if len(bad):
        raise SalunError(
            f"{what} label {int(bad[0])} is out of range for a model with {n_out} outputs "
            f"(allowed 0..{n_out - 1})"
        )


def model_dtype(model: nn.Module) -> torch.dtype:
    params = [p for p in model.parameters() if p.is_floating_point()]
    return params[0].dtype if params else torch.float32


def model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def check_model(model: nn.Module, trains: bool) -> None:
    """A materialised model; one that is to be unlearned needs trainable parameters."""
    if not isinstance(model, nn.Module):
        raise SalunError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_meta:
            raise SalunError(
                f"the model's {name!r} is on the meta device (no values): load its weights "
                "first (e.g. model.to_empty(device='cpu') and load_state_dict)"
            )
    if not trains:
        return
    params = list(model.parameters())
    if not params:
        raise SalunError("the model has no parameters: there is nothing to unlearn")
    if not any(p.requires_grad for p in params):
        raise SalunError(
            f"all {len(params)} parameters of the model are frozen (requires_grad=False); "
            "unfreeze the ones to unlearn (requires_grad_(True))"
        )


@contextlib.contextmanager
def _single_item_batchnorm(model: nn.Module) -> Iterator[list[str]]:
    """While open, forward passes record (in the list yielded) the BatchNorm layers that a batch
    of one item cannot train: one value per channel (BatchNorm1d on (N, C), 2d on 1x1 maps)."""
    found: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if torch.is_tensor(x) and x.ndim >= 2 and x[0, 0].numel() == 1:
            found.append(names[module])

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def check_data(
    model: nn.Module, parts: dict[str, Dataset | DataLoader], task: ClassificationTask, action: str
) -> tuple[int, str | None]:
    """Check inputs and labels of every dataset against the model; return its class count and
    the name of a BatchNorm layer that cannot train on a batch of one item (or None).

    Empty sets, lying ``__len__``, wrong shapes, dtypes, non-finite inputs or outputs, missing
    labels and labels out of range are one-line SalunErrors here, before any training, instead
    of raw IndexError / RuntimeError deep in a loop. A DataLoader is checked on its first batch
    (its collate_fn may build the inputs).
    """
    want = model_dtype(model)
    shape = None
    n_out = 0
    single_bn = None
    for what, data in parts.items():
        ds = as_dataset(data, what)
        if len(ds) == 0:  # type: ignore[arg-type]
            continue
        x, y0 = _first_input(data, task.adapter, what)
        if not x.is_floating_point():
            raise SalunError(f"{what} inputs must be floating-point tensors, got {x.dtype}")
        if x.dtype != want and want not in LOW_PRECISION:  # bf16/fp16 models: inputs are cast
            raise SalunError(
                f"{what} inputs are {x.dtype} but the model's weights are {want}; convert one"
            )
        if shape is None:
            shape = tuple(x.shape[1:])
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), _single_item_batchnorm(model) as bn:
                    out = model(task.inputs(x))
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise SalunError(
                    f"the model cannot run on {what} inputs of shape {shape}: {first}"
                ) from None
            finally:
                model.train(was_training)
            single_bn = bn[0] if bn else None
            logits = output_logits(out, task.output_fn)
            if logits.ndim != 2:
                raise SalunError(
                    f"the model must return logits of shape (batch, classes), got "
                    f"{tuple(logits.shape)}"
                )
            n_out = int(logits.shape[-1])
            if not bool(logits.isfinite().all()):
                raise SalunError(
                    f"the model's outputs are not finite (NaN or inf); refusing to {action} it "
                    "(diverged training? lower the learning rate)"
                )
        elif tuple(x.shape[1:]) != shape:
            raise SalunError(
                f"{what} inputs have shape {tuple(x.shape[1:])} but the first set's have {shape}"
            )
        if isinstance(data, DataLoader):  # labels come from its collate_fn: the first batch's
            _read(ds, len(ds) - 1, what)  # type: ignore[arg-type]  # __len__ against the items
            _check_inputs_finite(x, what)
            if torch.is_tensor(y0) and not y0.is_floating_point():
                _check_labels(y0.reshape(-1).long(), n_out, what)
            continue
        _check_labels(_labels(ds, task.adapter, what), n_out, what)
    return n_out, single_bn


def check_disjoint(forget: Dataset, retain: Dataset) -> None:
    """Refuse forget and retain sets that share items, where that is cheap to see: the same
    dataset (or DataLoaders over it), Subsets of one dataset with common indices, and
    TensorDatasets whose inputs are views of one tensor sharing rows. (Equal copies are not
    compared.)"""
    if forget is retain:
        raise SalunError(
            f"forget and retain are the same {type(forget).__name__} object; they must be "
            "disjoint (retain: the data to keep)"
        )
    if (
        isinstance(forget, Subset)
        and isinstance(retain, Subset)
        and forget.dataset is retain.dataset
    ):
        common = {int(i) for i in forget.indices} & {int(i) for i in retain.indices}
        if common:
            raise SalunError(
                f"forget and retain share {len(common)} items of one dataset (e.g. index "
                f"{min(common)}); they must be disjoint"
            )
    if isinstance(forget, TensorDataset) and isinstance(retain, TensorDataset):
        a, b = forget.tensors[0], retain.tensors[0]
        if _shared_rows(a, b):
            raise SalunError(
                "forget and retain inputs are views of one tensor sharing rows; they must be "
                "disjoint"
            )


def _shared_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are row slices of one tensor with rows in common."""
    if a.device != b.device or a.dtype != b.dtype or a.ndim == 0 or b.ndim == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    if a.stride() != b.stride() or a.shape[1:] != b.shape[1:] or a.stride(0) == 0:
        return False
    step = a.stride(0)
    start_a, start_b = a.storage_offset(), b.storage_offset()
    if (start_a - start_b) % step:
        return False
    return max(start_a, start_b) < min(start_a + len(a) * step, start_b + len(b) * step)


def check_batchnorm_batches(method: Any, parts: dict[str, Dataset | DataLoader], bn: str) -> None:
    """BatchNorm layer ``bn`` cannot train on one item: batch sizes of 1, sets of one item and
    user DataLoaders ending in a batch of one are refused; salun's own training loaders drop such
    a last batch instead (:attr:`ClassificationTask.single_item_batchnorm`)."""
    why = f"the model's BatchNorm layer {bn!r} cannot train on a batch of one item"
    for f in dataclasses.fields(method):
        if f.name.endswith("batch_size") and getattr(method, f.name) == 1:
            raise SalunError(f"{f.name}=1: {why}; use a batch size >= 2")
    for what, data in parts.items():
        n = len(as_dataset(data, what))  # type: ignore[arg-type]
        if n == 1:
            raise SalunError(f"the {what} set has 1 item: {why}; give it at least 2")
        loader_bs = data.batch_size if isinstance(data, DataLoader) else None
        if loader_bs and not data.drop_last and n % loader_bs == 1:  # type: ignore[union-attr]
            raise SalunError(
                f"the {what} DataLoader ends in a batch of one item ({n} items, "
                f"batch_size={loader_bs}): {why}; pass drop_last=True or another batch_size"
            )
