"""Comparisons between models: Tug-of-War against Retrain, ZRF against a random model, and the
parameter-space L2 distance.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from salun.core.errors import SalunError
from salun.eval.mia_family import probabilities
from salun.models import reinitialise

logger = logging.getLogger(__name__)

DEFINITIONS: dict[str, str] = {
    "ToW": (
        "Tug-of-War (Zhao et al., NeurIPS 2024): (1-|a_f(u)-a_f(r)|)(1-|a_r(u)-a_r(r)|)"
        "(1-|a_t(u)-a_t(r)|) with a_f, a_r, a_t the top-1 accuracies as fractions in [0, 1] on "
        "D_f, D_r and test of the unlearned model u and Retrain r; in [0, 1], 1 = same as Retrain"
    ),
    "ZRF": (
        "Zero Retrain Forgetting (Chundawat et al., AAAI 2023): 1 - mean over D_f of the "
        "Jensen-Shannon divergence, in bits (log base 2, so JS in [0, 1]), between the softmax "
        "outputs of the model and of a randomly initialised model of the same architecture "
        "(PyTorch default reset_parameters, seeded); in [0, 1], 1 = as uninformed as random"
    ),
    "L2-distance": (
        "sqrt(sum over all parameters (not buffers) of ||theta_a - theta_b||^2), e.g. a = "
        "unlearned, b = Retrain or Original"
    ),
    "L2-distance-relative": "L2-distance divided by sqrt(sum over parameters of ||theta_b||^2)",
}

_ACC_KEYS = {"forget": "UA", "retain": "RA", "test": "TA"}


def _accuracies(acc: Mapping, name: str) -> tuple[float, float, float]:
    """(forget, retain, test) accuracies as fractions from percentages.

    Accepts either ``{"forget", "retain", "test"}`` accuracies or salun metrics
    ``{"UA", "RA", "TA"}`` (forget accuracy = 100 - UA).
    """
    out = []
    for key, metric in _ACC_KEYS.items():
        if key in acc:
            value = float(acc[key])
        elif metric in acc:
            value = float(acc[metric])
            value = 100.0 - value if metric == "UA" else value
        else:
            raise SalunError(
                f"{name} lacks the {key} accuracy; give keys forget, retain, test (accuracy %) "
                f"or UA, RA, TA (salun metrics, %)"
            )
        if not math.isnan(value) and not 0.0 <= value <= 100.0:
            raise SalunError(f"{name} {key} accuracy {value} is not a percentage in [0, 100]")
        out.append(value / 100.0)
    return out[0], out[1], out[2]


def tug_of_war(unlearned_acc: Mapping, retrain_acc: Mapping) -> float:
    """Tug-of-War, ToW (Zhao et al., NeurIPS 2024, "What makes unlearning hard and what to do
    about it").

    Objective: ``prod over S in (D_f, D_r, test) of (1 - |a_S(unlearned) - a_S(retrain)|)`` with
    accuracies as fractions; in ``[0, 1]``, 1 = identical accuracies to Retrain.

    Args:
        unlearned_acc, retrain_acc: Accuracies in percent, keyed ``forget``, ``retain``, ``test``,
            or salun metrics keyed ``UA``, ``RA``, ``TA`` (forget accuracy = 100 - UA), e.g. the
            output of :func:`salun.eval.evaluate_classifier`.

    Returns:
        ToW; nan when an accuracy is nan (e.g. an empty test set).

    Raises:
        SalunError: A missing key or a value outside [0, 100].
    """
    u = _accuracies(unlearned_acc, "unlearned_acc")
    r = _accuracies(retrain_acc, "retrain_acc")
    tow = 1.0
    for a, b in zip(u, r, strict=True):
        tow *= 1.0 - abs(a - b)
    return tow


def random_init_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with freshly initialised weights: the "incompetent teacher" of
    Chundawat et al., AAAI 2023.

    Every submodule with ``reset_parameters`` is re-initialised (PyTorch defaults, under
    ``torch.manual_seed(seed)`` in a forked RNG so the caller's RNG is untouched); BatchNorm
    running statistics are reset. Parameters owned by modules without ``reset_parameters`` keep
    their values (a warning names them). Returned in eval mode on the model's device.
    """
    fresh = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in fresh.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        reset = reinitialise(fresh, seed)
    kept = [
        f"{m}.{p}" if m else p
        for m, module in fresh.named_modules()
        if m not in reset
        for p, _ in module.named_parameters(recurse=False)
    ]
    if kept:
        logger.warning("random_init_copy: no reset_parameters for %s; kept as is", ", ".join(kept))
    return fresh.eval()


@torch.no_grad()
def zrf(
    model: nn.Module,
    incompetent_model: nn.Module,
    forget_dataset,
    task,
    batch_size: int = 512,
) -> float:
    """Zero Retrain Forgetting score, ZRF (Chundawat et al., AAAI 2023, "Can bad teaching induce
    forgetting?").

    Objective: ``ZRF = 1 - (1/n) sum_i JS(p_model(x_i), p_incompetent(x_i))`` over the forget set,
    with JS the Jensen-Shannon divergence in bits (log base 2), so ``ZRF in [0, 1]``; 1 = the
    model is as uninformed on D_f as a random model. (With natural logs JS lies in [0, ln 2];
    dividing by ln 2 gives the base-2 value used here.)

    Args:
        model: The model to score.
        incompetent_model: A randomly initialised model, e.g. :func:`random_init_copy`.
        forget_dataset: Items ``(x, y, ...)``.
        task: The task (``loader``, ``batch``).

    Returns:
        ZRF in [0, 1]; nan for an empty forget set.
    """
    p, _ = probabilities(model, forget_dataset, task, batch_size)
    q, _ = probabilities(incompetent_model, forget_dataset, task, batch_size)
    if len(p) == 0:
        return float("nan")
    if p.shape != q.shape:
        raise SalunError(f"model outputs {tuple(p.shape)} but incompetent model {tuple(q.shape)}")
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:  # KL(a || m) in bits; 0 log 0 = 0
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log2() - m.clamp_min(1e-300).log2()), 0)

    js = (0.5 * kl(p).sum(1) + 0.5 * kl(q).sum(1)).clamp(0.0, 1.0)
    return float(1.0 - js.mean())


@torch.no_grad()
def l2_distance(model_a: nn.Module, model_b: nn.Module, relative: bool = False) -> float:
    """L2 distance between two models' parameters (not buffers), a parameter-space proximity
    measure used to compare an unlearned model with Retrain (e.g. Jia et al., NeurIPS 2023,
    "Model sparsity can simplify machine unlearning"; Thudi et al., USENIX Security 2022).

    Objective: ``sqrt(sum_name ||a[name] - b[name]||^2)``; with ``relative`` divided by
    ``sqrt(sum_name ||b[name]||^2)``. Computed in float64.

    Raises:
        SalunError: The models' parameter names or shapes differ, or ``relative`` with an
            all-zero ``model_b``.
    """
    pa = dict(model_a.named_parameters())
    pb = dict(model_b.named_parameters())
    if pa.keys() != pb.keys():
        only_a = sorted(pa.keys() - pb.keys())[:3]
        only_b = sorted(pb.keys() - pa.keys())[:3]
        raise SalunError(
            f"models have different parameters: only in a {only_a}, only in b {only_b}"
        )
    diff = norm_b = 0.0
    for name, a in pa.items():
        b = pb[name]
        if a.shape != b.shape:
            raise SalunError(
                f"parameter {name} has shape {tuple(a.shape)} in a but {tuple(b.shape)} in b"
            )
        b64 = b.detach().to(a.device, torch.float64)
        diff += float((a.detach().double() - b64).pow(2).sum())
        norm_b += float(b64.pow(2).sum())
    if not relative:
        return math.sqrt(diff)
    if norm_b == 0.0:
        raise SalunError("relative L2 distance is undefined: model_b has all-zero parameters")
    return math.sqrt(diff) / math.sqrt(norm_b)
