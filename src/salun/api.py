"""Python API for your own model and data: ``salun.unlearn`` and ``salun.evaluate``.

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
  from a forked state seeded with ``seed``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from salun.core.errors import SalunError
from salun.eval import evaluate_classifier
from salun.methods import UnlearnData, get_method, mask_policy, run_method
from salun.methods._fit import EpochCallback, recording
from salun.methods.saliency import SaliencyMask, compute_saliency_mask
from salun.tasks.batches import BatchAdapter, output_logits
from salun.tasks.classification.classification_objective import ClassificationTask

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _dataset(data: Dataset | DataLoader, what: str) -> Dataset:
    if isinstance(data, DataLoader):
        return data.dataset
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise SalunError(
            f"{what} must be a map-style Dataset or a DataLoader, got {type(data).__name__}"
        )
    return data


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


def _first_input(data: Dataset | DataLoader, adapter: BatchAdapter, what: str) -> torch.Tensor:
    """One input of ``data`` with a batch dimension (a loader's first batch, as it collates)."""
    if isinstance(data, DataLoader):
        x, _ = _split(next(iter(data)), adapter, what)
        if not torch.is_tensor(x):
            raise SalunError(f"{what} batches must hold input tensors, got {type(x).__name__}")
        return x[:1]
    x, _ = _split(data[0], adapter, what)
    if not torch.is_tensor(x):
        raise SalunError(f"{what} inputs must be tensors, got {type(x).__name__}")
    return x[None]


def _labels(dataset: Dataset, adapter: BatchAdapter, what: str) -> torch.Tensor:
    """Every label of ``dataset`` as int64 (cheap for TensorDataset and salun datasets)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        raw: Any = dataset.tensors[1]
    elif torch.is_tensor(getattr(dataset, "labels", None)):
        raw = dataset.labels  # type: ignore[attr-defined]
    else:
        raw = [_split(dataset[i], adapter, what)[1] for i in range(len(dataset))]  # type: ignore[arg-type]
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


def _model_dtype(model: nn.Module) -> torch.dtype:
    params = [p for p in model.parameters() if p.is_floating_point()]
    return params[0].dtype if params else torch.float32


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _check_data(
    model: nn.Module, parts: dict[str, Dataset | DataLoader], task: ClassificationTask
) -> int:
    """Check inputs and labels of every dataset against the model; return its class count.

    Wrong shapes, dtypes, missing labels and labels out of range are one-line SalunErrors
    here, before any training, instead of raw IndexError / RuntimeError deep in a loop. A
    DataLoader is checked on its first batch (its collate_fn may build the inputs).
    """
    want = _model_dtype(model)
    shape = None
    n_out = 0
    for what, data in parts.items():
        ds = _dataset(data, what)
        if len(ds) == 0:  # type: ignore[arg-type]
            continue
        x = _first_input(data, task.adapter, what)
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
                with torch.no_grad():
                    out = model(task.inputs(x))
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise SalunError(
                    f"the model cannot run on {what} inputs of shape {shape}: {first}"
                ) from None
            finally:
                model.train(was_training)
            logits = output_logits(out, task.output_fn)
            if logits.ndim != 2:
                raise SalunError(
                    f"the model must return logits of shape (batch, classes), got "
                    f"{tuple(logits.shape)}"
                )
            n_out = int(logits.shape[-1])
        elif tuple(x.shape[1:]) != shape:
            raise SalunError(
                f"{what} inputs have shape {tuple(x.shape[1:])} but the first set's have {shape}"
            )
        if isinstance(data, DataLoader):
            continue  # labels come from its collate_fn: checked by the loss as batches come
        labels = _labels(ds, task.adapter, what)
        bad = labels[(labels < 0) | (labels >= n_out)]
        if len(bad):
            raise SalunError(
                f"{what} label {int(bad[0])} is out of range for a model with {n_out} outputs "
                f"(allowed 0..{n_out - 1})"
            )
    return n_out


def _task(
    model: nn.Module,
    parts: dict[str, Dataset | DataLoader],
    num_classes: int | None,
    device: str | None,
    progress: bool,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> ClassificationTask:
    """The classification task for ``model``: on its own device unless ``device`` is given."""
    from salun.config import check_device
    from salun.tasks.batches import resolve_device

    if device is None:
        dev = _model_device(model)
    else:
        check_device(device)
        dev = resolve_device(device)
    if output_fn is not None and not callable(output_fn):
        raise SalunError(f"output_fn must be a callable (output -> logits), got {output_fn!r}")
    dtype = _model_dtype(model)
    task = ClassificationTask(
        num_classes=num_classes or 1,
        device=dev,
        progress=progress,
        dtype=dtype if dtype in LOW_PRECISION else None,
        output_fn=output_fn,
        adapter=BatchAdapter(input_key, label_key),
    )
    model.to(dev)
    n = _check_data(model, parts, task)
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
    forget_ds, retain_ds = _dataset(forget, "forget"), _dataset(retain, "retain")
    if len(forget_ds) == 0:  # type: ignore[arg-type]
        raise SalunError("the forget set is empty: there is nothing to unlearn")
    parts = {"forget": forget, "retain": retain}
    task = _task(model, parts, num_classes, device, progress, output_fn, input_key, label_key)
    if val is not None:
        task_val = _dataset(val, "val")
        if isinstance(val, DataLoader):
            task.use_loader(task_val, val)
    with isolated_rng(seed, task.device), recording(callbacks=callbacks):
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
    if batch_size < 1:
        raise SalunError(f"batch_size must be >= 1, got {batch_size}")
    parts = {"forget": forget, "retain": retain, "test": test}
    task = _task(model, parts, num_classes, device, False, output_fn, input_key, label_key)
    f, r, t = (_dataset(d, w) for w, d in parts.items())
    with isolated_rng(mia_seed, task.device):
        return evaluate_classifier(model, f, r, t, task, mia_seed, batch_size)
