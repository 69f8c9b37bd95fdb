"""Weight saliency: which weights to update when forgetting.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both
Image Classification and Generation", ICLR 2024 (arXiv 2310.12508), eq. 6-7:
    g = | sum over forget batches of grad_theta l_f(theta_o) |,   m = 1[g >= gamma],
with gamma chosen so that the top ``ratio`` of all parameters (ranked globally, as in the
authors' code) is salient. Per-layer ranking is an option.

The threshold is a k-th value found through a histogram and a small ``torch.kthvalue``, never
a full sort; ties at the threshold are
broken by parameter order so the mask holds exactly ``round(ratio * N)`` weights. Masks are
stored as bool tensors in safetensors with metadata (ratio, loss, data hash, model hash).

Applying a mask means masking the *update*, not only the gradient: :class:`MaskGuard` zeroes
masked gradients before the step and, after it, restores non-salient weights to their anchor
values and zeroes their optimizer state, so weight decay, momentum and Adam moments cannot move
them. Non-salient weights stay bit-identical.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from salun.core.checks import first_non_finite
from salun.core.errors import SalunError
from salun.core.io import hash_state, load_tensors, read_metadata, save_tensors

log = logging.getLogger(__name__)


@dataclass
class SaliencyMask:
    """Bool mask per parameter name (True = salient, may be updated) plus metadata."""

    masks: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def selected(self) -> int:
        return sum(int(torch.count_nonzero(m)) for m in self.masks.values())

    @property
    def fraction(self) -> float:
        return self.selected / max(self.total, 1)

    def save(self, path: str | Path) -> None:
        meta = {k: str(v) for k, v in self.meta.items()}
        meta.update(selected=str(self.selected), total=str(self.total), format="salun-mask-v1")
        save_tensors(path, {k: v.to(torch.bool) for k, v in self.masks.items()}, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> SaliencyMask:
        path = Path(path)
        if not path.is_file():
            raise SalunError(f"mask file {str(path)!r} does not exist")
        try:
            masks = load_tensors(path)
            meta: dict[str, Any] = read_metadata(path)
        except Exception as e:  # safetensors raises its own error types
            raise SalunError(
                f"mask file {str(path)!r} is not a readable safetensors file: {e}"
            ) from e
        not_bool = sorted({str(v.dtype).removeprefix("torch.") for v in masks.values()} - {"bool"})
        if not_bool:
            raise SalunError(
                f"mask file {str(path)!r} holds {not_bool[0]} tensors; a saliency mask holds bool "
                "tensors (salun mask writes them)"
            )
        mask = cls(masks=dict(masks), meta=meta)
        if mask.selected == 0:
            raise SalunError(
                f"mask file {str(path)!r} selects 0 of {mask.total} weights; unlearning with it "
                "would change nothing"
            )
        check_mask_meta(mask, f"mask file {str(path)!r}")
        if model is not None:
            mask.check(model)
        return mask

    def check_model_hash(self, model: nn.Module, force: bool = False) -> None:
        """Refuse a mask computed on another model (recorded ``model_hash`` differs), or one
        that records no model at all (no salun metadata), unless ``force``."""
        where = f"mask {self.meta.get('file', '')!r}"
        recorded = self.meta.get("model_hash")
        if not recorded:
            if not force:
                raise SalunError(
                    f"{where} records no model_hash, so nothing ties it to this model; pass "
                    "--force to use it anyway"
                )
            log.warning("%s records no model_hash; used as forced", where)
            return
        actual = hash_state(model)
        if recorded != actual and not force:
            raise SalunError(
                f"{where} was computed on another model (model_hash "
                f"{recorded[:12]}, this model {actual[:12]}); pass --force to use it anyway"
            )
        if recorded != actual:
            log.warning("mask model_hash %s differs from the model's %s (forced)", recorded, actual)

    def check_data_hash(self, data_hash: str, forgets: str, force: bool = False) -> None:
        """Refuse a mask computed for another forget set (recorded ``data_hash`` differs from
        ``data_hash``, the run's; ``forgets`` says what the run forgets), or one recording no
        forget set, unless ``force``."""
        where = f"mask {self.meta.get('file', '')!r}"
        recorded = self.meta.get("data_hash") or ""
        if recorded == data_hash:
            return
        if not recorded and not self.meta.get("model_hash"):
            problem = (
                "has no salun metadata (no model_hash, no data_hash), so nothing ties it to "
                "this model and forget set"
            )
        elif not recorded:
            problem = "records no data_hash, so nothing ties it to this run's forget set"
        else:
            problem = (
                f"was computed for another forget set (data_hash {recorded[:12]}; this run "
                f"forgets {forgets}, data_hash {data_hash[:12]})"
            )
        if not force:
            raise SalunError(f"{where} {problem}; pass --force to use it anyway")
        log.warning("%s %s; used as forced", where, problem)

    def get(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The mask of parameter ``name``; all False for a frozen parameter the mask omits."""
        m = self.masks.get(name)
        return torch.zeros(param.shape, dtype=torch.bool) if m is None else m

    def check(self, model: nn.Module) -> None:
        """Fail unless the mask covers the model's trainable parameters with matching shapes.

        Frozen parameters (``requires_grad=False``: a linear probe's backbone, adapters) may be
        left out: nothing updates them, so a mask over the trainable parameters only is whole.
        """
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        missing = sorted(trainable - set(self.masks))
        extra = sorted(set(self.masks) - set(params))
        if missing or extra:
            raise SalunError(
                f"mask does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for name, m in self.masks.items():
            if tuple(m.shape) != tuple(params[name].shape):
                raise SalunError(
                    f"mask does not match the model: {name} has shape "
                    f"{tuple(m.shape)} in the mask, {tuple(params[name].shape)} in the model"
                )


def _is_float(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], bool]:
    def ok(v: str) -> bool:
        try:
            x = float(v)
        except ValueError:
            return False
        return math.isfinite(x) and (lo < x if lo_open else lo <= x) and x <= hi

    return ok


def _is_count(v: str) -> bool:
    return 0 < len(v) <= 20 and v.isascii() and v.isdigit()


def _is_hex(v: str) -> bool:
    return len(v) <= 64 and all(c in "0123456789abcdef" for c in v)


#: What a mask file's metadata may hold: each field's check of its (string) value, and what
#: is allowed.
MASK_META: dict[str, tuple[Callable[[str], bool], str]] = {
    "format": (lambda v: v == "salun-mask-v1", "'salun-mask-v1'"),
    "ratio": (_is_float(0.0, 1.0, lo_open=True), "a number in (0, 1]"),
    "per_layer": (lambda v: v in ("True", "False"), "True or False"),
    "loss": (lambda v: 0 < len(v) <= 200 and v.isprintable(), "a name like 'task:forget_loss'"),
    "forget_loss_mean": (_is_float(-math.inf, math.inf), "a finite number"),
    "model_hash": (lambda v: len(v) == 64 and _is_hex(v), "a sha256 (64 hex digits)"),
    "data_hash": (_is_hex, "empty or hex digits"),
    "seconds": (_is_float(0.0, math.inf), "a finite number >= 0"),
    "selected": (_is_count, "the count of salient weights"),
    "total": (_is_count, "the count of weights"),
    "file": (lambda v: len(v) <= 4096 and v.isprintable(), "a path"),
}


def check_mask_meta(mask: SaliencyMask, where: str) -> None:
    """Validate every metadata field of a mask read from a file (they reach metrics.json):
    known names, well-formed values, and counts that match the tensors."""
    for key, value in mask.meta.items():
        if key not in MASK_META:
            raise SalunError(
                f"{where}: unknown metadata field {key!r}; allowed: {', '.join(MASK_META)}"
            )
        ok, allowed = MASK_META[key]
        if not ok(value):
            raise SalunError(f"{where}: metadata {key}={value[:40]!r} is not {allowed}")
    for key, actual in (("selected", mask.selected), ("total", mask.total)):
        if key in mask.meta and int(mask.meta[key]) != actual:
            raise SalunError(
                f"{where}: metadata {key}={mask.meta[key]} but the tensors hold {actual}"
            )


def kth_largest(scores: list[torch.Tensor], k: int, bins: int = 4096) -> torch.Tensor:
    """The ``k``-th largest value over several tensors, without concatenating or sorting them.

    A histogram over the common range narrows the value to a few bins; exact counts by
    comparison confirm the bracket [a, b] (count(> b) < k <= count(>= a)); a k-th value over the
    few candidates inside it gives the answer. Falls back to all values if the bracket fails.
    Extra memory is one bool per weight plus the candidates, instead of sorted copies.
    """
    lo = min(float(s.min()) for s in scores)
    hi = max(float(s.max()) for s in scores)
    a, b = lo, hi
    if hi > lo:
        hist = torch.stack([torch.histc(s.float(), bins=bins, min=lo, max=hi) for s in scores]).sum(
            0
        )
        at_or_above = hist.flip(0).cumsum(0).flip(0)  # count in bins >= i
        i = int(torch.nonzero(at_or_above >= k).max())
        width = (hi - lo) / bins
        a, b = lo + (i - 1) * width, lo + (i + 2) * width  # one spare bin each side
    n_above = sum(int(torch.count_nonzero(s > b)) for s in scores)
    if not n_above < k <= sum(int(torch.count_nonzero(s >= a)) for s in scores):
        a, b, n_above = lo, hi, 0
    cand = torch.cat([s[(s >= a) & (s <= b)].float().reshape(-1) for s in scores])
    return torch.kthvalue(cand, cand.numel() - (k - n_above) + 1).values


def top_k_mask(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool masks selecting exactly the ``k`` largest entries across ``scores``.

    Threshold = the k-th largest value (:func:`kth_largest`); ties at the threshold are
    filled in parameter order, so the count is exact and the result deterministic.
    """
    n = sum(s.numel() for s in scores)
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    if k >= n:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    threshold = kth_largest(scores, k)
    scores = [s.contiguous() for s in scores]  # e.g. channels_last weights: index in logical order
    masks = [s > threshold for s in scores]
    need = k - sum(int(torch.count_nonzero(m)) for m in masks)
    for s, m in zip(scores, masks, strict=True):
        if need <= 0:
            break
        ties = torch.nonzero((s == threshold).reshape(-1)).squeeze(1)[:need]
        m.view(-1)[ties] = True
        need -= ties.numel()
    return masks


def grad_sums(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[Any], tuple[torch.Tensor, float]],
    power: int = 1,
) -> tuple[dict[str, torch.Tensor], float, float]:
    """The one gradient-accumulation loop: for each batch, ``loss, w = loss_fn(batch)``, then
    the gradient of ``loss * w`` (raised to ``power``) is added per trainable parameter (by
    name). Used by the saliency (power 1, ``w`` = batch size), SSD's importances (power 2,
    ``w`` = 1), the diagonal Fisher (power 2, ``w`` = batch size) and IU's mean gradient.

    Returns (sums by parameter name, total weight, sum of ``loss * w``); gradients are cleared.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    weight, loss_sum = 0.0, 0.0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss, w = loss_fn(batch)
        (loss * w).backward()
        for n, p in params.items():
            if p.grad is not None:
                g = p.grad.detach()
                sums[n] += g if power == 1 else g.pow(power)
        weight += w
        loss_sum += float(loss.detach()) * w
    model.zero_grad(set_to_none=True)
    return sums, weight, loss_sum


def gradient_saliency(
    model: nn.Module, loader, task, progress: bool = True, desc: str = "saliency"
) -> tuple[dict[str, torch.Tensor], float]:
    """|grad of the mean forgetting loss over D_f| at the current weights, in eval mode.

    Each batch's (mean) loss gradient is weighted by its size, so the result is the gradient of
    the mean over all forget samples whatever the batching (the reference sums per-batch means,
    which equals this up to scale when all batches are full). Under torch.distributed the
    per-rank sums and counts are all-reduced, so every rank gets the single-process result.
    Returns the absolute gradients and the mean forgetting loss.
    """
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics, as in the paper
    grads, samples, loss_sum = grad_sums(
        model,
        tqdm(loader, desc=desc, disable=not progress, leave=False),
        lambda batch: (task.forget_loss(model, batch), len(batch[1])),
    )
    stats = torch.tensor([loss_sum, samples], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        for g in grads.values():
            dist.all_reduce(g)
        dist.all_reduce(stats)
    count = max(float(stats[1]), 1.0)
    model.train(was_training)
    return {name: g.abs() / count for name, g in grads.items()}, float(stats[0]) / count


def threshold_saliency(
    scores: dict[str, torch.Tensor], ratio: float = 0.5, per_layer: bool = False
) -> dict[str, torch.Tensor]:
    """Turn saliency scores into bool masks keeping the top ``ratio`` (global or per layer)."""
    if not 0 < ratio <= 1:
        raise SalunError(f"mask ratio must be in (0, 1], got {ratio!r}")
    names = list(scores)
    if per_layer:
        if all(int(round(ratio * s.numel())) == 0 for s in scores.values()):
            raise SalunError(f"mask ratio {ratio!r} selects 0 weights in every layer (per_layer)")
        return {
            n: top_k_mask([scores[n]], int(round(ratio * scores[n].numel())))[0].cpu()
            for n in names
        }
    total = sum(s.numel() for s in scores.values())
    k = int(round(ratio * total))
    if k == 0:
        raise SalunError(
            f"mask ratio {ratio!r} selects 0 of {total} weights; give a ratio >= {0.5 / total:.2g}"
        )
    masks = top_k_mask([scores[n] for n in names], k)
    return {n: m.cpu() for n, m in zip(names, masks, strict=True)}


def compute_saliency_mask(
    model: nn.Module,
    forget,
    task,
    ratio: float = 0.5,
    per_layer: bool = False,
    batch_size: int = 256,
    data_hash: str | None = None,
) -> SaliencyMask:
    """SalUn weight saliency mask of ``model`` for the forget data (dataset or loader).

    Args:
        model: the original model (weights theta_o).
        forget: the forget set D_f, a Dataset or a DataLoader.
        task: the task giving ``forget_loss`` (classification: -CE; diffusion: noise MSE).
        ratio: share of all parameters marked salient (paper default 0.5).
        per_layer: rank within each parameter tensor instead of globally.
        batch_size: batch size when ``forget`` is a dataset.
        data_hash: recorded in the metadata to tie the mask to its forget set.
    """
    if not 0 < ratio <= 1:
        raise SalunError(f"mask ratio must be in (0, 1], got {ratio!r}")
    if not (hasattr(task, "forget_loss") and hasattr(task, "loader")):
        raise SalunError(
            f"task must be a task object (with forget_loss and loader), got {task!r}; "
            "salun.compute_saliency_mask also takes task='classification'"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SalunError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not hasattr(forget, "batch_size") and not (
        hasattr(forget, "__len__") and hasattr(forget, "__getitem__")
    ):
        raise SalunError(
            f"forget must be a map-style Dataset or a DataLoader, got {type(forget).__name__}"
        )
    if hasattr(forget, "batch_size"):
        loader = forget
    else:
        if dist.is_available() and dist.is_initialized():
            # each rank takes every world-th sample; the gradient sums are all-reduced below
            rank, world = dist.get_rank(), dist.get_world_size()
            forget = torch.utils.data.Subset(forget, range(rank, len(forget), world))
        loader = task.loader(forget, batch_size, False)
    if len(loader.dataset) == 0:
        raise SalunError("the forget set is empty: nothing to compute saliency on")
    start = time.perf_counter()
    scores, mean_loss = gradient_saliency(model, loader, task, progress=task.progress)
    bad = first_non_finite(scores)
    if bad is not None:
        raise SalunError(
            f"the saliency of {bad!r} is not finite (NaN or inf): the model's weights or its "
            "loss on the forget set are not finite; refusing to build a mask"
        )
    masks = threshold_saliency(scores, ratio, per_layer)
    seconds = time.perf_counter() - start
    meta = {
        "ratio": ratio,
        "per_layer": per_layer,
        "loss": getattr(task, "name", "task") + ":forget_loss",
        "forget_loss_mean": mean_loss,
        "model_hash": hash_state(model),
        "data_hash": data_hash or "",
        "seconds": round(seconds, 4),
    }
    mask = SaliencyMask(masks=masks, meta=meta)
    log.info(
        "saliency mask: %d of %d weights (%.4f) in %.2fs",
        mask.selected,
        mask.total,
        mask.fraction,
        seconds,
    )
    return mask


class MaskGuard:
    """Keeps non-salient weights bit-identical through any optimizer step.

    ``before_step`` zeroes their gradients (so clipping and Adam statistics ignore them);
    ``after_step`` copies the anchor values back and zeroes their optimizer state (momentum,
    Adam moments), undoing weight decay and momentum drift. With ``mask=None`` it does nothing.
    """

    def __init__(self, model: nn.Module, mask: SaliencyMask | None, optimizer=None) -> None:
        self.optimizer = optimizer
        self.entries: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        if mask is None:
            return
        mask.check(model)
        for name, p in model.named_parameters():
            if not p.requires_grad:  # frozen: no gradient, no step, nothing to guard
                continue
            m = mask.masks[name].to(p.device)
            if bool(m.all()):
                continue
            self.entries.append((p, m, p.detach().clone()))

    def before_step(self) -> None:
        for p, m, _ in self.entries:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self) -> None:
        for p, m, anchor in self.entries:
            p.copy_(torch.where(m, p, anchor))
            if self.optimizer is not None:
                for value in self.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(m)
