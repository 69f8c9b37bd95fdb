"""Python API for your own model and data: ``salun.unlearn`` and ``salun.evaluate``.

Any ``nn.Module`` classifier (inputs -> logits) and any PyTorch datasets (or data loaders)
whose items are ``(input, label, ...)`` work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from salun.errors import SalunError
from salun.eval import evaluate_classifier
from salun.methods import UnlearnData, get_method, run_method
from salun.saliency import SaliencyMask, compute_saliency_mask
from salun.tasks.classification import ClassificationTask, resolve_device


def _dataset(data: Dataset | DataLoader, what: str) -> Dataset:
    if isinstance(data, DataLoader):
        return data.dataset
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise SalunError(
            f"{what} must be a map-style Dataset or a DataLoader, got {type(data).__name__}"
        )
    return data


def _first_item(dataset: Dataset, what: str) -> tuple[torch.Tensor, Any]:
    item = dataset[0]
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise SalunError(
            f"{what} items must be (input, label, ...) tuples; got {type(item).__name__}"
        )
    x = item[0]
    if not torch.is_tensor(x):
        raise SalunError(f"{what} inputs must be tensors, got {type(x).__name__}")
    return x, item[1]


def _labels(dataset: Dataset, what: str) -> torch.Tensor:
    """Every label of ``dataset`` as int64 (cheap for TensorDataset and salun datasets)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        raw: Any = dataset.tensors[1]
    elif torch.is_tensor(getattr(dataset, "labels", None)):
        raw = dataset.labels  # type: ignore[attr-defined]
    else:
        raw = []
        for i in range(len(dataset)):  # type: ignore[arg-type]
            item = dataset[i]
            if not isinstance(item, tuple | list) or len(item) < 2:
                raise SalunError(f"{what} item {i} has no label; items must be (input, label)")
            raw.append(item[1])
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


def _check_data(model: nn.Module, parts: dict[str, Dataset], device: torch.device) -> int:
    """Check inputs and labels of every dataset against the model; return its class count.

    Wrong shapes, dtypes, missing labels and labels out of range are one-line SalunErrors
    here, before any training, instead of raw IndexError / RuntimeError deep in a loop.
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    want = params[0].dtype if params else torch.float32
    shape = None
    n_out = 0
    for what, ds in parts.items():
        if len(ds) == 0:  # type: ignore[arg-type]
            continue
        x, _ = _first_item(ds, what)
        if not x.is_floating_point():
            raise SalunError(f"{what} inputs must be floating-point tensors, got {x.dtype}")
        if x.dtype != want:
            raise SalunError(
                f"{what} inputs are {x.dtype} but the model's weights are {want}; convert one"
            )
        if shape is None:
            shape = tuple(x.shape)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    out = model(x[None].to(device))
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise SalunError(
                    f"the model cannot run on {what} inputs of shape {shape}: {first}"
                ) from None
            finally:
                model.train(was_training)
            if not torch.is_tensor(out) or out.ndim != 2:
                raise SalunError(
                    f"the model must return logits of shape (batch, classes), got "
                    f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
                )
            n_out = int(out.shape[-1])
        elif tuple(x.shape) != shape:
            raise SalunError(
                f"{what} inputs have shape {tuple(x.shape)} but the first set's have {shape}"
            )
        labels = _labels(ds, what)
        bad = labels[(labels < 0) | (labels >= n_out)]
        if len(bad):
            raise SalunError(
                f"{what} label {int(bad[0])} is out of range for a model with {n_out} outputs "
                f"(allowed 0..{n_out - 1})"
            )
    return n_out


def _task(
    model: nn.Module,
    parts: dict[str, Dataset],
    num_classes: int | None,
    device: str,
    progress: bool,
):
    from salun.config import check_device

    check_device(device)
    dev = resolve_device(device)
    model.to(dev)
    n = _check_data(model, parts, dev)
    if num_classes is not None and num_classes != n:
        raise SalunError(f"num_classes={num_classes} but the model has {n} outputs")
    return ClassificationTask(num_classes=num_classes or n, device=dev, progress=progress)


def unlearn(
    model: nn.Module,
    forget: Dataset | DataLoader,
    retain: Dataset | DataLoader,
    method: str = "salun",
    mask: SaliencyMask | bool | None = None,
    mask_ratio: float = 0.5,
    num_classes: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
    val: Dataset | DataLoader | None = None,
    **params: Any,
) -> nn.Module:
    """Make ``model`` forget ``forget`` while keeping ``retain``; returns the model (changed in
    place: deep-copy it first to keep the original).

    Args:
        model: a classifier returning logits.
        forget: the data to forget (D_f); items ``(x, y, ...)``.
        retain: the data to keep (D_r).
        method: a registered method name (``salun.list_methods()``).
        mask: a :class:`SaliencyMask`, ``True`` to compute one (top ``mask_ratio``), or ``None``
            (SalUn then computes its own; other methods update every weight). ``False`` is
            refused for SalUn, which is defined by its mask (use ``method="rl"``).
        mask_ratio: the saliency mask's ratio; for ``salun_soft`` its soft-threshold ratio.
        val: a validation split held out of training (never the test set): with it, methods
            with ``calibrate=True`` (SalUn by default) choose lr and epoch by the Retrain-free
            estimate (:mod:`salun.methods._calibrate`); without it they run as configured.
        num_classes: number of classes (default: inferred from one forward pass).
        seed: seeds data order and random labels.
        **params: the method's hyperparameters (e.g. ``lr=0.01, epochs=5``).
    """
    if "mask_ratio" in params:
        raise SalunError("pass the mask ratio as mask_ratio=..., the argument of salun.unlearn")
    m = get_method(method, **params)
    if mask is False and getattr(type(m), "requires_mask", False):
        raise SalunError(
            f"mask=False: method {method!r} is defined by its saliency mask; use method='rl'"
        )
    forget_ds, retain_ds = _dataset(forget, "forget"), _dataset(retain, "retain")
    if len(forget_ds) == 0:  # type: ignore[arg-type]
        raise SalunError("the forget set is empty: there is nothing to unlearn")
    parts = {"forget": forget_ds, "retain": retain_ds}
    task = _task(model, parts, num_classes, device, progress)
    torch.manual_seed(seed)
    if mask is True:
        mask = compute_saliency_mask(model, forget_ds, task, mask_ratio)
    elif mask is False:
        mask = None
    if hasattr(m, "mask_ratio"):  # salun (its own mask) and salun_soft (soft threshold)
        m.mask_ratio = mask_ratio
        m.check()
    val_ds = None if val is None else _dataset(val, "val")
    data = UnlearnData(forget_ds, retain_ds, seed, val=val_ds)
    return run_method(m, model, data, task, mask)[0]


def evaluate(
    model: nn.Module,
    forget: Dataset | DataLoader,
    retain: Dataset | DataLoader,
    test: Dataset | DataLoader,
    num_classes: int | None = None,
    device: str = "auto",
    mia_seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """UA, RA, TA and MIA-Efficacy (percent), with their definitions and evaluator version."""
    f, r, t = _dataset(forget, "forget"), _dataset(retain, "retain"), _dataset(test, "test")
    if batch_size < 1:
        raise SalunError(f"batch_size must be >= 1, got {batch_size}")
    task = _task(model, {"forget": f, "retain": r, "test": t}, num_classes, device, False)
    return evaluate_classifier(model, f, r, t, task, mia_seed, batch_size)
