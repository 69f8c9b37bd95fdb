"""Forgetting quality of the NeurIPS 2023 Machine Unlearning Challenge (per-example epsilon).

Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS
unlearning competition", 2024 (arXiv 2406.09073), with the constants of the organisers' released
metric code (Apache-2.0; re-implemented here). Objective: how well can a family of threshold
attacks tell, per forget example, N unlearned models from N models retrained without D_f?

Protocol (what :func:`epsilon_score` runs):
- Unlearned population: the method is run N times on the *same* original model (seeds differ),
  as in the competition, which re-ran each submission from one pretrained model. "Do nothing"
  therefore gives N identical models, a zero-spread population that the metric scores as
  epsilon = cap.
- Retrained population: N fresh models trained on D_r with the retrain recipe (other seeds).
- Feature per (model, forget example): logit-scaled confidence of the true label,
  phi = log p_y - log(sum_{k != y} p_k) (the challenge's choice; computed in float64).
- Per example, the positive population is the one with the larger median phi. Two attack
  families, on the challenge's threshold grids (100 thresholds per unit of phi):
  * single threshold: predict positive iff phi >= t, t on linspace(min, max) of all values;
  * interval: predict "peakier population" (smaller range, width w) iff l <= phi <= r, with
    r on linspace(min_p + w - 2, max_p + 2) and, for each r, l on linspace(r - w - 2, r - w + 2)
    (400 values); min_p, max_p from the peakier population.
  Each threshold gives (FPR, FNR) over the N + N models and, with delta = 1e-5,
      eps_t = max(0, log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR));
  a threshold with FPR = FNR = 0 (perfect separation) gives eps_t = inf, one with exactly one of
  FPR, FNR zero is discarded (too few samples to estimate). eps = max_t eps_t, clipped to
  [0, 50]. If the smaller range over the larger range is below 0.01 (one population
  near-constant), eps = 50 outright.
- Score per example: buckets of width 0.5 from 0 up to max_eps = ceil(ln(N - 1)); bucket k
  ([0.5k, 0.5(k+1))) earns 2^-k points, eps >= max_eps earns 0. Forgetting quality
  F = mean points over D_f (1 = indistinguishable from retraining, 0 = fully distinguishable).
- Final score = F * (RA_U / RA_R) * (TA_U / TA_R), RA/TA = accuracy on D_r / the test set
  averaged over each population. Reported separately from F.

Budget: the competition's leaderboard used 512 models per population; N is the whole cost here
(N unlearning runs + N retrainings; default N = 4 on digits). With N = 4 the reachable epsilons
are coarse (FPR, FNR in quarters; a finite eps is at most ln 3, so scores lie in
{1, 1/2, 1/4, 1/8, 0}) and chance alone makes a share of examples perfectly separated:
compare methods at one N, never across N. Reference values (measured): two identical Gaussian
populations score F = 0.26 at N = 4 and 0.19 at N = 8, so even perfect unlearning stays far
below 1; on class-wise digits (200 images, N = 4) Retrain-vs-Retrain scored 0.31, RL 0.21,
SalUn 0.18, FT (2 epochs) and doing nothing 0 (near-deterministic runs from one original form
a peaky population, or stay perfectly separable from Retrain).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from salun.attacks.population import (
    NOOP,
    RETRAIN,
    logit_confidences,
    model_seeds,
    progress_bar,
    saliency_mask_for,
    train_on,
    unlearn_copy,
)
from salun.core.errors import SalunError
from salun.eval.accuracy import predict
from salun.methods.saliency import SaliencyMask

log = logging.getLogger(__name__)

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
BUCKET_WIDTH = 0.5
PEAKY_RATIO = 0.01

DEFINITION = (
    "NeurIPS 2023 unlearning challenge forgetting quality F: per forget example, epsilon from "
    "(FPR, FNR) of single- and interval-threshold attacks on logit-scaled confidence separating "
    "N unlearned (one original, N seeds) from N retrained models, delta=1e-5, cap 50; score "
    "2^-k for epsilon in [0.5k, 0.5k+0.5) below ceil(ln(N-1)), else 0; F = mean; final score = "
    "F * RA_U/RA_R * TA_U/TA_R"
)


def _rates_single(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of 'positive iff phi >= t' on the challenge's grid of t."""
    both = np.concatenate([pos, neg])
    lo, hi = float(both.min()), float(both.max())
    num = int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT))
    t = np.linspace(lo, hi, num)
    p, n = np.sort(pos), np.sort(neg)
    fnr = np.searchsorted(p, t, side="left") / len(p)  # share of positives below t
    fpr = 1.0 - np.searchsorted(n, t, side="left") / len(n)  # share of negatives >= t
    return fpr, fnr


def _rates_interval(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of 'peakier population iff l <= phi <= r' on the challenge's grid of (l, r)."""
    if np.ptp(pos) >= np.ptp(neg):
        pos, neg = neg, pos  # positive := the peakier population
    width = float(np.ptp(pos))
    lo, hi = float(pos.min()) + width - BUFFER, float(pos.max()) + BUFFER
    right = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    n_left = int(math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT))
    offsets = np.linspace(-width - BUFFER, -width + BUFFER, n_left)
    r = np.repeat(right, n_left)
    left = (right[:, None] + offsets[None, :]).reshape(-1)
    p, n = np.sort(pos), np.sort(neg)

    def inside(sorted_values: np.ndarray) -> np.ndarray:
        count = np.searchsorted(sorted_values, r, side="right") - np.searchsorted(
            sorted_values, left, side="left"
        )
        return np.clip(count, 0, None) / len(sorted_values)

    return inside(n), 1.0 - inside(p)


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> float:
    """max over thresholds of eps_t (see module docstring); nan when every threshold is discarded."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    perfect = (fpr == 0) & (fnr == 0)
    if perfect.any():
        return math.inf
    keep = (fpr > 0) & (fnr > 0)
    if not keep.any():
        return math.nan
    f, n = fpr[keep], fnr[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        e1 = np.log(1.0 - delta - f) - np.log(n)
        e2 = np.log(1.0 - delta - n) - np.log(f)
    eps = np.fmax(e1, e2)  # fmax ignores a nan (log of a negative) on one side
    eps = eps[~np.isnan(eps)]
    return float(np.clip(eps.max(), 0.0, None)) if eps.size else math.nan


def example_epsilon(
    unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA, cap: float = EPSILON_CAP
) -> float:
    """Epsilon of one forget example from its N unlearned and N retrained confidences."""
    u = np.asarray(unlearned, dtype=np.float64).reshape(-1)
    r = np.asarray(retrained, dtype=np.float64).reshape(-1)
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    largest, smallest = max(np.ptp(pos), np.ptp(neg)), min(np.ptp(pos), np.ptp(neg))
    if largest == 0:  # both constant (not covered by the challenge code): equal or not
        return 0.0 if pos[0] == neg[0] else cap
    if smallest / largest < PEAKY_RATIO:
        return cap
    fpr_i, fnr_i = _rates_interval(pos, neg)
    fpr_s, fnr_s = _rates_single(pos, neg)
    eps = epsilon_from_rates(np.concatenate([fpr_i, fpr_s]), np.concatenate([fnr_i, fnr_s]), delta)
    if math.isnan(eps):  # every threshold discarded (the challenge code asserts here)
        return 0.0
    return float(min(eps, cap))


def max_epsilon(n_models: int) -> float:
    """Upper end of the scored buckets: ceil(ln(N - 1))."""
    return float(math.ceil(math.log(n_models - 1)))


def bucket_points(eps: np.ndarray, n_models: int) -> np.ndarray:
    """2^-k for eps in [0.5k, 0.5(k+1)) with 0.5(k+1) <= ceil(ln(N-1)); 0 above."""
    eps = np.asarray(eps, dtype=np.float64)
    n_buckets = int(round(max_epsilon(n_models) / BUCKET_WIDTH))
    k = np.floor(eps / BUCKET_WIDTH)
    return np.where(k < n_buckets, 0.5**k, 0.0)


def forgetting_quality(
    unlearned_confs: np.ndarray,
    retrained_confs: np.ndarray,
    delta: float = DELTA,
    cap: float = EPSILON_CAP,
) -> dict[str, Any]:
    """F and per-example epsilons from ``[N models, S examples]`` confidence arrays."""
    u = np.asarray(unlearned_confs, dtype=np.float64)
    r = np.asarray(retrained_confs, dtype=np.float64)
    if u.ndim != 2 or u.shape != r.shape:
        raise SalunError(
            f"unlearned and retrained confidences must both be [models, examples]; got "
            f"{u.shape} and {r.shape}"
        )
    n_models, n_examples = u.shape
    if n_models < 3:
        raise SalunError(
            f"the epsilon score needs at least 3 models per population, got {n_models}"
        )
    if n_examples == 0:
        raise SalunError("the epsilon score needs at least one forget example")
    eps = np.array([example_epsilon(u[:, i], r[:, i], delta, cap) for i in range(n_examples)])
    points = bucket_points(eps, n_models)
    return {
        "forgetting_quality": float(points.mean()),
        "epsilon_mean": float(eps.mean()),
        "epsilon_median": float(np.median(eps)),
        "share_at_cap": float(np.mean(eps >= cap)),
        "share_unscored": float(np.mean(points == 0)),
        "epsilons": eps,
        "n_models": int(n_models),
        "n_examples": int(n_examples),
        "delta": delta,
        "cap": cap,
        "max_epsilon": max_epsilon(n_models),
    }


@dataclass
class Population:
    """Per-model outputs of N models: forget-set confidences, RA and TA (both in %)."""

    kind: str
    confs: np.ndarray  # [N, |D_f|]
    ra: list[float]
    ta: list[float]
    seeds: list[int]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_models": len(self.seeds),
            "RA": float(np.mean(self.ra)),
            "TA": float(np.mean(self.ta)),
            "seeds": self.seeds,
            "seconds": round(self.seconds, 3),
            **self.meta,
        }


def _measure(exp, model: nn.Module) -> tuple[np.ndarray, float, float]:
    bs = exp.cfg.eval.batch_size
    confs = logit_confidences(model, exp.forget, exp.task, bs)
    ra = predict(model, exp.retain, exp.task, bs).accuracy
    ta = predict(model, exp.test, exp.task, bs).accuracy
    return confs, ra, ta


def retrain_population(exp, n_models: int = 4, seed: int | None = None) -> Population:
    """N models trained from scratch on D_r (retrain recipe), seeds from stream 'eps-retrain'.

    Reusable across methods: pass it as ``reference`` to :func:`epsilon_score`. The models come
    from the population cache of :func:`salun.attacks.population.train_on`, so every method (and
    every bench run) on the same split shares one trained population.
    """
    seed = exp.cfg.seed if seed is None else seed
    seeds = model_seeds(seed, n_models, "eps-retrain")
    start = time.perf_counter()
    confs, ra, ta = [], [], []
    with progress_bar(exp, n_models, "epsilon: retrain population") as bar:
        for s in seeds:
            model = train_on(exp, exp.split.retain, s, exp.cfg.retrain_recipe, "retrain")
            c, a, t = _measure(exp, model)
            confs.append(c)
            ra.append(a)
            ta.append(t)
            bar.update(1)
    return Population(RETRAIN, np.stack(confs), ra, ta, seeds, time.perf_counter() - start)


def unlearn_population(
    exp,
    method_name: str,
    params: dict[str, Any] | None = None,
    use_mask: bool | SaliencyMask = False,
    n_models: int = 4,
    seed: int | None = None,
    original: nn.Module | None = None,
) -> Population:
    """N runs of the method on one original model (seeds from stream 'eps-unlearn').

    ``original`` defaults to the pipeline's (cached) original model. A mask, when used, is
    computed once on the original: it is the same for every run.
    """
    from salun.experiment import train_model

    seed = exp.cfg.seed if seed is None else seed
    seeds = model_seeds(seed, n_models, "eps-unlearn")
    start = time.perf_counter()
    if original is None and method_name != RETRAIN:
        original, _ = train_model(exp, "original")
    mask: bool | SaliencyMask = use_mask
    if use_mask is True and method_name not in (NOOP, RETRAIN):
        assert original is not None
        mask = saliency_mask_for(exp, original, exp.split.forget)
    confs, ra, ta = [], [], []
    with progress_bar(exp, n_models, f"epsilon: {method_name} population") as bar:
        for s in seeds:
            model = unlearn_copy(
                exp, original, method_name, params, exp.split.forget, exp.split.retain, s, mask
            )
            c, a, t = _measure(exp, model)
            confs.append(c)
            ra.append(a)
            ta.append(t)
            bar.update(1)
    meta = {"method": method_name, "params": dict(params or {}), "use_mask": bool(use_mask)}
    return Population(
        method_name, np.stack(confs), ra, ta, seeds, time.perf_counter() - start, meta
    )


def epsilon_score(
    exp,
    method_name: str,
    params: dict[str, Any] | None = None,
    use_mask: bool | SaliencyMask = False,
    n_models: int = 4,
    seed: int | None = None,
    original: nn.Module | None = None,
    reference: Population | None = None,
    unlearned: Population | None = None,
) -> dict[str, Any]:
    """The challenge's forgetting quality F and final score of one method on ``exp``'s split.

    Trains ``n_models`` retrained models (or uses ``reference``) and runs the method
    ``n_models`` times on ``original`` (or uses ``unlearned``). ``method_name`` may be
    ``"none"`` (do nothing) or ``"retrain"`` (a second, independently seeded retrain
    population: the metric's retrain-vs-retrain baseline).
    """
    if n_models < 3:
        raise SalunError(f"epsilon_score needs n_models >= 3, got {n_models}")
    seed = exp.cfg.seed if seed is None else seed
    start = time.perf_counter()
    if reference is None:
        reference = retrain_population(exp, n_models, seed)
    if unlearned is None:
        unlearned = unlearn_population(exp, method_name, params, use_mask, n_models, seed, original)
    if len(reference.seeds) != len(unlearned.seeds):
        raise SalunError(
            f"both populations need the same number of models; got {len(unlearned.seeds)} "
            f"unlearned and {len(reference.seeds)} retrained"
        )
    fq = forgetting_quality(unlearned.confs, reference.confs)
    eps = fq.pop("epsilons")
    ra_u, ra_r = float(np.mean(unlearned.ra)), float(np.mean(reference.ra))
    ta_u, ta_r = float(np.mean(unlearned.ta)), float(np.mean(reference.ta))
    ra_ratio = ra_u / ra_r if ra_r > 0 else math.nan
    ta_ratio = ta_u / ta_r if ta_r > 0 else math.nan
    result = {
        "metric": "epsilon (NeurIPS 2023 unlearning challenge)",
        "method": method_name,
        "params": dict(params or {}),
        "use_mask": bool(use_mask),
        **fq,
        "ra_ratio": ra_ratio,
        "ta_ratio": ta_ratio,
        "final_score": fq["forgetting_quality"] * ra_ratio * ta_ratio,
        "unlearned": unlearned.summary(),
        "retrained": reference.summary(),
        "seed": int(seed),
        "per_example_epsilon": [round(float(e), 4) for e in eps],
        "definition": DEFINITION,
        "seconds": round(time.perf_counter() - start, 3),
    }
    log.info(
        "epsilon score of %s: F=%.3f, final %.3f, mean eps %.2f (N=%d)",
        method_name,
        result["forgetting_quality"],
        result["final_score"],
        result["epsilon_mean"],
        fq["n_models"],
    )
    return result
