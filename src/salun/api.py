"""Python API for your own model and data: ``salun.unlearn``, ``salun.evaluate`` and
``salun.compute_saliency_mask``.

Any ``nn.Module`` classifier and any PyTorch datasets or data loaders work:
- outputs: logits as a tensor, an object with ``.logits`` (Hugging Face), the first element of
  a tuple, or whatever a user ``output_fn(output) -> logits`` extracts;
- items: ``(input, label, ...)`` tuples or dicts (``input_key`` / ``label_key``; by default
  ``image``, ``pixel_values``, ``input`` or ``x`` and ``label``, ``labels`` or ``y``);
- a DataLoader is used as it is (its ``collate_fn``, sampler and workers are kept);
- the model stays on its own device and dtype unless ``device=`` is given (bf16/fp16 models
  get their inputs cast to their dtype; the loss is computed in fp32);
- masks cover the trainable parameters only: frozen parameters stay frozen and bit-identical;
- the caller's random state (torch, CUDA, numpy, ``random``) is left as it was: the run draws
  from a forked state seeded with ``seed``;
- inputs are checked before any work (one-line :class:`SalunError`,
  :mod:`salun.tasks.classification.classification_inputs`), and ``unlearn`` never returns
  non-finite weights;
- a BatchNorm layer that cannot train on one item (one value per channel): salun's training
  loaders drop a last batch of one item (logged); batch size 1, a set of one item and a user
  DataLoader ending in one item (without ``drop_last=True``) are refused.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from salun.core.checks import check_int, first_non_finite
from salun.core.errors import SalunError
from salun.core.limits import MAX_SEED
from salun.eval import evaluate_classifier
from salun.methods import UnlearnData, get_method, mask_policy, run_method, saliency
from salun.methods._fit import EpochCallback, recording
from salun.methods.saliency import SaliencyMask
from salun.tasks.batches import BatchAdapter
from salun.tasks.classification.classification_inputs import (
    LOW_PRECISION,
    as_dataset,
    check_batchnorm_batches,
    check_data,
    check_disjoint,
    check_model,
    model_device,
    model_dtype,
)
from salun.tasks.classification.classification_objective import ClassificationTask


def _task(
    model: nn.Module,
    parts: dict[str, Dataset | DataLoader],
    num_classes: int | None,
    device: str | None,
    progress: bool,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
    action: str = "evaluate",
) -> ClassificationTask:
    """The classification task for ``model``: on its own device unless ``device`` is given.

    ``action`` (``"unlearn"``, ``"evaluate"``) says what the model is checked for."""
    from salun.config import check_device
    from salun.tasks.batches import resolve_device

    check_model(model, trains=action == "unlearn")
    if device is None:
        dev = model_device(model)
    else:
        check_device(device)
        dev = resolve_device(device)
    if output_fn is not None and not callable(output_fn):
        raise SalunError(f"output_fn must be a callable (output -> logits), got {output_fn!r}")
    dtype = model_dtype(model)
    task = ClassificationTask(
        num_classes=num_classes or 1,
        device=dev,
        progress=progress,
        dtype=dtype if dtype in LOW_PRECISION else None,
        output_fn=output_fn,
        adapter=BatchAdapter(input_key, label_key),
    )
    model.to(dev)
    n, task.single_item_batchnorm = check_data(model, parts, task, action)
    if num_classes is not None and num_classes != n:
        raise SalunError(f"num_classes={num_classes} but the model has {n} outputs")
    task.num_classes = n
    for data in parts.values():
        if isinstance(data, DataLoader):
            task.use_loader(data.dataset, data)
    return task


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run under torch/numpy/``random`` states seeded with ``seed``; restore the caller's after.

    Library code below may seed torch's generator (re-initialisation); the caller never sees it.
    """
    cuda = [device.index or 0] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def unlearn(
    model: nn.Module,
    forget: Dataset | DataLoader,
    retain: Dataset | DataLoader,
    method: str = "salun",
    mask: SaliencyMask | bool | None = None,
    mask_ratio: float = 0.5,
    num_classes: int | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = False,
    val: Dataset | DataLoader | None = None,
    *,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
    callbacks: Sequence[EpochCallback] = (),
    init_fn: Callable[[nn.Module], None] | None = None,
    **params: Any,
) -> nn.Module:
    """Make ``model`` forget ``forget`` while keeping ``retain``; returns the model (changed in
    place: deep-copy it first to keep the original).

    Args:
        model: a classifier (see the module docstring for the outputs it may return).
        forget: the data to forget (D_f); a Dataset of ``(x, y, ...)`` tuples or dicts, or a
            DataLoader, used as it is.
        retain: the data to keep (D_r).
        method: a registered method name (``salun.list_methods()``).
        mask: a :class:`SaliencyMask` (over the trainable parameters), ``True`` to compute one
            (top ``mask_ratio``), or ``None`` (SalUn then computes its own; other methods update
            every trainable weight). ``False`` is refused for SalUn, which is defined by its
            mask (use ``method="rl"``).
        mask_ratio: the saliency mask's ratio; for ``salun_soft`` its soft-threshold ratio.
        num_classes: number of classes (default: inferred from one forward pass).
        device: ``None`` keeps the model where it is; ``"cpu"``, ``"cuda"``, ``"auto"``... move it.
        seed: seeds data order, random labels and re-initialisation (in a forked RNG: the
            caller's torch, numpy and ``random`` states are unchanged afterwards).
        val: a validation split held out of training (never the test set): with it, methods
            with ``calibrate=True`` (SalUn by default) choose lr and epoch by the Retrain-free
            estimate (:mod:`salun.methods._calibrate`); without it they run as configured.
        output_fn: ``output -> logits`` for models whose output is none of a tensor, ``.logits``
            or a tuple starting with the logits.
        input_key, label_key: keys of dict items (defaults: see the module docstring).
        callbacks: callables receiving a dict per epoch (desc, epoch, epochs, loss,
            phase_losses, lr, seconds, steps), e.g. to log to TensorBoard or W&B.
        init_fn: ``method="retrain"`` only: re-initialises the model in place (called after
            seeding). Without it Retrain calls every module's ``reset_parameters`` and refuses
            models with parameters no module can reset (e.g. a ViT's ``pos_embed``).
        **params: the method's hyperparameters (e.g. ``lr=0.01, epochs=5``).
    """
    if "mask_ratio" in params:
        raise SalunError("pass the mask ratio as mask_ratio=..., the argument of salun.unlearn")
    check_int(seed, "seed", 0, MAX_SEED)
    m = get_method(method, **params)
    policy = mask_policy(m)
    if mask is False and policy == "required":
        raise SalunError(
            f"mask=False: method {method!r} is defined by its saliency mask; use method='rl'"
        )
    if policy == "refused" and mask is not None and mask is not False:
        raise SalunError(f"method {method!r} takes no mask (its mask capability is 'refused')")
    if init_fn is not None:
        if not hasattr(m, "init_fn"):
            raise SalunError(f"init_fn is used by method 'retrain' only, not {method!r}")
        if not callable(init_fn):
            raise SalunError(f"init_fn must be a callable taking the model, got {init_fn!r}")
        m.init_fn = init_fn  # type: ignore[misc]  # per run, not a hyperparameter
    forget_ds, retain_ds = as_dataset(forget, "forget"), as_dataset(retain, "retain")
    if len(forget_ds) == 0:  # type: ignore[arg-type]
        raise SalunError("the forget set is empty: there is nothing to unlearn")
    check_disjoint(forget_ds, retain_ds)
    parts = {"forget": forget, "retain": retain}
    task = _task(
        model, parts, num_classes, device, progress, output_fn, input_key, label_key, "unlearn"
    )
    if task.single_item_batchnorm:
        check_batchnorm_batches(m, parts, task.single_item_batchnorm)
    if val is not None:
        task_val = as_dataset(val, "val")
        if isinstance(val, DataLoader):
            task.use_loader(task_val, val)
    with isolated_rng(seed, task.device), recording(callbacks=callbacks):
        if mask is True:
            mask = saliency.compute_saliency_mask(model, forget_ds, task, mask_ratio)
        elif mask is False:
            mask = None
        if hasattr(m, "mask_ratio"):  # salun (its own mask) and salun_soft (soft threshold)
            m.mask_ratio = mask_ratio
            m.check()
        val_ds = None if val is None else as_dataset(val, "val")
        data = UnlearnData(forget_ds, retain_ds, seed, val=val_ds)
        result = run_method(m, model, data, task, mask)[0]
    bad = first_non_finite(result.state_dict())
    if bad is not None:
        lr = getattr(m, "lr", None)
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        hint = f"a smaller lr (got {lr:g})" if isinstance(lr, float) else "gentler hyperparameters"
        raise SalunError(
            f"method {method!r} made the model's weights non-finite (NaN or inf) in {bad!r}; "
            f"try {hint}{f' than {given}' if given and lr is None else ''} (the model was "
            "changed in place: reload it)"
        )
    return result


def evaluate(
    model: nn.Module,
    forget: Dataset | DataLoader,
    retain: Dataset | DataLoader,
    test: Dataset | DataLoader,
    num_classes: int | None = None,
    device: str | None = None,
    mia_seed: int = 0,
    batch_size: int = 512,
    *,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> dict[str, Any]:
    """UA, RA, TA and MIA-Efficacy (percent), with their definitions and evaluator version.

    Datasets and loaders as for :func:`unlearn`; the model stays on its device unless
    ``device`` is given.
    """
    check_int(batch_size, "batch_size", 1)
    check_int(mia_seed, "mia_seed", 0, MAX_SEED)
    parts = {"forget": forget, "retain": retain, "test": test}
    for what, data in parts.items():
        if len(as_dataset(data, what)) == 0:  # type: ignore[arg-type]
            raise SalunError(
                f"the {what} set is empty; evaluate needs at least one item in each of forget, "
                "retain and test"
            )
    task = _task(model, parts, num_classes, device, False, output_fn, input_key, label_key)
    f, r, t = (as_dataset(d, w) for w, d in parts.items())
    with isolated_rng(mia_seed, task.device):
        return evaluate_classifier(model, f, r, t, task, mia_seed, batch_size)


#: The task names :func:`compute_saliency_mask` builds a task for (others: pass a task object).
TASK_NAMES = ("classification",)


def compute_saliency_mask(
    model: nn.Module,
    forget: Dataset | DataLoader,
    task: Any = "classification",
    ratio: float = 0.5,
    per_layer: bool = False,
    batch_size: int = 256,
    data_hash: str | None = None,
    *,
    num_classes: int | None = None,
    device: str | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> SaliencyMask:
    """SalUn's weight saliency mask of ``model`` for ``forget`` (see
    :func:`salun.methods.saliency.compute_saliency_mask`).

    ``task``: ``"classification"`` (the model and data are checked and adapted as by
    :func:`unlearn`; ``num_classes``, ``device``, ``output_fn`` and the keys as there) or a task
    object (e.g. ``Experiment.task``), used as it is.
    """
    if isinstance(task, str):
        if task not in TASK_NAMES:
            raise SalunError(
                f"unknown task {task!r}; allowed: {', '.join(TASK_NAMES)} or a task object "
                "(with forget_loss and loader)"
            )
        check_int(batch_size, "batch_size", 1)
        if len(as_dataset(forget, "forget")) == 0:  # type: ignore[arg-type]
            raise SalunError("the forget set is empty: nothing to compute saliency on")
        parts = {"forget": forget}
        task = _task(
            model, parts, num_classes, device, False, output_fn, input_key, label_key, "unlearn"
        )
        with isolated_rng(0, task.device):
            return saliency.compute_saliency_mask(
                model, forget, task, ratio, per_layer, batch_size, data_hash
            )
    return saliency.compute_saliency_mask(
        model, forget, task, ratio, per_layer, batch_size, data_hash
    )
