"""Python API for your own model and data: ``salun.unlearn`` and ``salun.evaluate``.

Any ``nn.Module`` classifier (inputs -> logits) and any PyTorch datasets (or data loaders)
whose items are ``(input, label, ...)`` work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

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


def _num_classes(model: nn.Module, dataset: Dataset, device: torch.device) -> int:
    x = dataset[0][0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(x)[None].to(device))
    model.train(was_training)
    return int(out.shape[-1])


def _task(model: nn.Module, dataset: Dataset, num_classes: int | None, device: str, progress: bool):
    dev = resolve_device(device)
    model.to(dev)
    n = num_classes or _num_classes(model, dataset, dev)
    return ClassificationTask(num_classes=n, device=dev, progress=progress)


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
    task = _task(model, forget_ds, num_classes, device, progress)
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
    task = _task(model, t, num_classes, device, False)
    return evaluate_classifier(model, f, r, t, task, mia_seed, batch_size)
