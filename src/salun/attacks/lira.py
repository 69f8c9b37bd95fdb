"""U-LiRA: a per-example likelihood-ratio membership attack adapted to unlearning.

Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy", 2024 (arXiv 2403.01218), built on LiRA (Carlini
et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022). Objective: from an
unlearned model's output on x, decide "x was trained on and then unlearned" against "x was never
seen"; accuracy 50 % on a balanced set means unlearning is indistinguishable from retraining.

Protocol (:func:`ulira`), a CPU-sized version of the paper's:
1. Targets: ``n_targets`` examples drawn (seeded) from the forget set D_f, and as many held-out
   examples the original model never saw, label-matched to them: first training-part images
   outside ``split.train`` (validation or unused), then test images.
2. Pool = ``split.train`` + the held-out targets; forget pool = D_f + the held-out targets.
   Balanced membership (as in LiRA's code): every pool example is in the training set of
   exactly floor(n/2) of the ``n_shadows`` models (a random permutation per example).
3. Shadow m: train a fresh model on its half (``exp.cfg.train`` recipe), then unlearn
   ``its half ∩ forget pool`` with the method under test (the retained part of its half is
   its D_r), so its forget ratio matches the experiment's. With method "retrain" the shadow is
   trained directly on that retained part; with "none" nothing is unlearned.
4. Feature: logit-scaled confidence phi = log(p_y / (1 - p_y)) of every target under every
   unlearned shadow (one query, no augmentation).
5. Per example, Gaussians are fitted to phi over the reference models where it was IN (trained
   then unlearned) and where it was OUT (never seen, but the model still went through
   unlearning of other examples). Means per example, over the same number of IN and OUT
   models (k = min of the two counts; see :func:`equal_counts` for why); standard deviations
   either pooled over all examples (``variance="global"``, LiRA's fixed-variance variant for
   few shadows: one sigma per side from the residuals around the per-example means) or per
   example.
   Score Lambda = log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out); predict "unlearned"
   iff Lambda > 0.
6. Evaluation, leave-one-out (LiRA evaluates on held-out models of the same process): each
   of the n models in turn is the
   model under test and the other n - 1 are the reference. Its targets split into IN (truly
   unlearned) and OUT (never seen); since every example is IN in exactly floor(n/2) models, the
   pooled decisions are balanced for even n, and the reported accuracy is the balanced
   accuracy (mean of TPR and TNR). AUC of Lambda is reported too.
7. Optionally, ``model_under_test`` (e.g. the run's unlearned model, trained on all of
   ``split.train`` and unlearned on all of D_f) is attacked with all n models as reference:
   sampled D_f targets are IN, held-out targets OUT. Caveat: shadows see half the data, that
   model all of it; LiRA's offline mismatch, so prefer the leave-one-out figure for comparisons.

Budget: n_shadows originals + n_shadows unlearning runs (for "retrain", n_shadows trainings),
each on about half of ``split.train``. The paper uses far more shadow models; here the default
is 8 (digits, CPU) and the smallest allowed is 4. With few shadows only the global-variance fit
is usable, and the figure is noisy: measured on digits (150 training images, 60 epochs, no
weight decay, 8 shadows, 15 + 15 targets, split seeds 0-4) do nothing scores 63-68 % and
Retrain 45-51 %; with 4 shadows (one reference model per side) the two overlap.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from torch import nn

from salun.attacks.population import (
    NOOP,
    RETRAIN,
    logit_confidences,
    model_seeds,
    pool_dataset,
    progress_bar,
    train_on,
    unlearn_copy,
)
from salun.core.errors import SalunError

log = logging.getLogger(__name__)

VARIANCES = ("auto", "global", "per_example")
GLOBAL_BELOW = 64  # "auto": global variance with fewer shadows (LiRA's advice for few models)
MIN_STD = 1e-3

DEFINITION = (
    "U-LiRA (Hayes et al. 2024): per-example Gaussians of logit-scaled confidence over shadow "
    "models where the example was trained on then unlearned (IN) or never seen (OUT); predict "
    "'unlearned' iff the likelihood ratio > 1; balanced accuracy (%) over leave-one-out target "
    "models; 50 = indistinguishable from retraining"
)


def heldout_targets(exp, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pool keys of examples the original never saw, label-matched to ``labels`` when possible.

    Training-part images outside ``split.train`` come first, then test images.
    """
    train, test = exp.bundle.train, exp.bundle.test
    n_train = len(train)
    unseen = np.ones(n_train, dtype=bool)
    unseen[exp.split.train] = False
    keys = np.concatenate([np.flatnonzero(unseen), n_train + np.arange(len(test))])
    key_labels = np.concatenate([train.labels.numpy()[unseen], test.labels.numpy()])
    group = np.concatenate([np.zeros(int(unseen.sum())), np.ones(len(test))])
    order = np.lexsort((rng.random(len(keys)), group))  # unseen training images first
    keys, key_labels = keys[order], key_labels[order]
    taken = np.zeros(len(keys), dtype=bool)
    picked: list[int] = []
    missing = 0
    for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
        where = np.flatnonzero((key_labels == label) & ~taken)[:count]
        taken[where] = True
        picked.extend(keys[where].tolist())
        missing += int(count) - len(where)
    if missing:
        where = np.flatnonzero(~taken)[:missing]
        taken[where] = True
        picked.extend(keys[where].tolist())
        log.warning("U-LiRA: %d held-out targets are not label-matched", missing)
    return np.asarray(picked, dtype=np.int64)


def balanced_membership(n_models: int, n_examples: int, rng: np.random.Generator) -> np.ndarray:
    """Bool ``[n_models, n_examples]``: each example IN in exactly ``n_models // 2`` models."""
    ranks = rng.random((n_models, n_examples)).argsort(axis=0).argsort(axis=0)
    return ranks < n_models // 2


def equal_counts(member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IN and OUT reference masks with, per example, the same number k = min(#IN, #OUT) of
    models each (the first k of each side in model order).

    Why: with balanced membership and leave-one-out, the reference counts reveal the target's
    membership (#IN = n/2 - 1 exactly when the target model is IN). A mean fitted on fewer
    models is noisier, so an unequal-count test leans away from the smaller side and scores
    *below* chance (measured: ~37 % instead of 50 % for Retrain with 4 models). Equal counts
    make the test symmetric: 50 % in expectation when IN and OUT are alike.
    """
    k = np.minimum(member.sum(0), (~member).sum(0))[None, :]
    use_in = member & (np.cumsum(member, axis=0) <= k)
    use_out = ~member & (np.cumsum(~member, axis=0) <= k)
    return use_in, use_out


def _fit_side(phi: np.ndarray, side: np.ndarray, fit: np.ndarray, variance: str):
    """(mu, sd) per example: mean over ``fit`` models; sd pooled over all ``side`` models."""
    count = fit.sum(0)
    mu = np.where(count > 0, (phi * fit).sum(0) / np.maximum(count, 1), np.nan)
    all_count = side.sum(0)
    all_mu = (phi * side).sum(0) / np.maximum(all_count, 1)
    resid2 = np.where(side, (phi - all_mu[None, :]) ** 2, 0.0)
    dof = int(all_count.sum() - (all_count > 0).sum())
    if dof > 0:
        pooled = math.sqrt(resid2.sum() / dof)
    else:  # one model per example: fall back to the spread of all observations (as LiRA)
        pooled = float(np.std(phi[side])) if side.any() else 1.0
    if variance == "global":
        sd = np.full(phi.shape[1], pooled)
    else:
        fit_mu = mu[None, :]
        per = np.sqrt(np.where(fit, (phi - fit_mu) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1))
        sd = np.where(count > 1, per, pooled)
    return mu, np.maximum(sd, MIN_STD)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def likelihood_ratio(
    phi_target: np.ndarray, phi_ref: np.ndarray, member_ref: np.ndarray, variance: str = "global"
) -> np.ndarray:
    """Lambda per example: log N(phi; IN fit) - log N(phi; OUT fit); nan without both sides.

    ``phi_ref``/``member_ref`` are ``[reference models, examples]``. Means use equal IN/OUT
    counts per example (:func:`equal_counts`); the global sd pools the residuals of all
    reference models of that side over all examples.
    """
    if variance not in ("global", "per_example"):
        raise SalunError(f"unknown variance {variance!r}; allowed: global, per_example")
    member_ref = np.asarray(member_ref, dtype=bool)
    use_in, use_out = equal_counts(member_ref)
    mu_in, sd_in = _fit_side(phi_ref, member_ref, use_in, variance)
    mu_out, sd_out = _fit_side(phi_ref, ~member_ref, use_out, variance)
    return _log_normal(phi_target, mu_in, sd_in) - _log_normal(phi_target, mu_out, sd_out)


def attack_scores(scores: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Balanced accuracy (%) of 'Lambda > 0', plain accuracy (%), AUC, counts; nan-safe."""
    ok = ~np.isnan(scores)
    s, t = scores[ok], truth[ok].astype(bool)
    pred = s > 0
    tpr = float(np.mean(pred[t])) if t.any() else math.nan
    tnr = float(np.mean(~pred[~t])) if (~t).any() else math.nan
    auc = math.nan
    if t.any() and (~t).any():
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(t, s))
    return {
        "balanced_accuracy": 100.0 * (tpr + tnr) / 2,
        "accuracy": 100.0 * float(np.mean(pred == t)) if len(t) else math.nan,
        "tpr": 100.0 * tpr,
        "tnr": 100.0 * tnr,
        "auc": auc,
        "decisions": int(len(t)),
        "undecided": int((~ok).sum()),
    }


def ulira(
    exp,
    method_name: str,
    params: dict[str, Any] | None = None,
    use_mask: bool = False,
    n_shadows: int = 8,
    n_targets: int = 50,
    seed: int | None = None,
    variance: str = "auto",
    model_under_test: nn.Module | None = None,
) -> dict[str, Any]:
    """Run U-LiRA against ``method_name`` on ``exp``'s split (protocol in the module docstring).

    ``method_name`` is a registered method, ``"none"`` (do nothing) or ``"retrain"``;
    ``use_mask`` computes the SalUn mask on each shadow for its own forget set. Returns the
    leave-one-out balanced accuracy (%, chance 50) with its budget, seeds and definition, and,
    when ``model_under_test`` is given, the same attack on that model.
    """
    if n_shadows < 4:
        raise SalunError(f"U-LiRA needs n_shadows >= 4 (IN and OUT references), got {n_shadows}")
    if variance not in VARIANCES:
        raise SalunError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")
    if variance == "auto":
        variance = "global" if n_shadows < GLOBAL_BELOW else "per_example"
    seed = exp.cfg.seed if seed is None else int(seed)
    split = exp.split
    rng = np.random.default_rng([seed, 31])
    n_t = min(int(n_targets), len(split.forget))
    if n_t < 2:
        raise SalunError(f"U-LiRA needs n_targets >= 2 and a forget set of >= 2, got {n_t}")
    forget_targets = np.sort(rng.choice(split.forget, size=n_t, replace=False))
    labels = exp.bundle.train.labels.numpy()[forget_targets]
    held = heldout_targets(exp, labels, rng)
    if len(held) < n_t:
        raise SalunError(
            f"U-LiRA needs {n_t} held-out examples the original never saw; only {len(held)} exist"
        )
    targets = np.concatenate([forget_targets, held])
    pool = np.concatenate([split.train, held])
    forget_pool = np.union1d(split.forget, held)
    member = balanced_membership(n_shadows, len(pool), rng)
    order = np.argsort(split.train)
    target_pos = order[np.searchsorted(split.train[order], forget_targets)]
    target_cols = np.concatenate([target_pos, len(split.train) + np.arange(len(held))])
    seeds = model_seeds(seed, n_shadows, "ulira")
    target_data = pool_dataset(exp, targets)
    bs = exp.cfg.eval.batch_size

    start = time.perf_counter()
    phi = np.zeros((n_shadows, len(targets)))
    with progress_bar(exp, n_shadows, f"U-LiRA shadows ({method_name})") as bar:
        for m, s in enumerate(seeds):
            half = pool[member[m]]
            forget_m = np.intersect1d(half, forget_pool)
            retain_m = np.setdiff1d(half, forget_pool)
            if method_name == RETRAIN:
                model = unlearn_copy(exp, None, RETRAIN, params, forget_m, retain_m, s)
            else:
                original = train_on(exp, half, s, desc="shadow")
                name = method_name if len(forget_m) else NOOP
                model = unlearn_copy(exp, original, name, params, forget_m, retain_m, s, use_mask)
            phi[m] = logit_confidences(model, target_data, exp.task, bs)
            bar.update(1)
    shadow_seconds = time.perf_counter() - start

    in_target = member[:, target_cols]  # [models, targets]: trained on, then unlearned
    scores = np.full_like(phi, np.nan)
    per_model = []
    for m in range(n_shadows):
        ref = np.arange(n_shadows) != m
        scores[m] = likelihood_ratio(phi[m], phi[ref], in_target[ref], variance)
        per_model.append(round(attack_scores(scores[m], in_target[m])["balanced_accuracy"], 3))
    pooled = attack_scores(scores.reshape(-1), in_target.reshape(-1))
    per_example = np.nanmean(np.where(in_target, scores > 0, scores <= 0), axis=0)

    n_train = len(exp.bundle.train)
    result: dict[str, Any] = {
        "metric": "U-LiRA",
        "method": method_name,
        "params": dict(params or {}),
        "use_mask": bool(use_mask),
        "accuracy": pooled["balanced_accuracy"],
        "chance": 50.0,
        **{k: v for k, v in pooled.items() if k != "balanced_accuracy"},
        "per_model_accuracy": per_model,
        "per_example_accuracy": {
            "mean": 100.0 * float(np.mean(per_example)),
            "share_above_chance": float(np.mean(per_example > 0.5)),
        },
        "n_shadows": n_shadows,
        "n_targets": n_t,
        "variance": variance,
        "evaluation": "leave-one-out: each model the target, the other n-1 the reference",
        "seed": seed,
        "model_seeds": seeds,
        "targets": {
            "forget": forget_targets.tolist(),
            "heldout_train": held[held < n_train].tolist(),
            "heldout_test": (held[held >= n_train] - n_train).tolist(),
        },
        "feature": "logit-scaled confidence log(p_y / (1 - p_y)), one query",
        "definition": DEFINITION,
        "seconds": round(time.perf_counter() - start, 3),
        "shadow_seconds": round(shadow_seconds, 3),
    }
    if model_under_test is not None:
        phi_t = logit_confidences(model_under_test, target_data, exp.task, bs)
        truth = np.concatenate([np.ones(n_t, dtype=bool), np.zeros(len(held), dtype=bool)])
        lam = likelihood_ratio(phi_t, phi, in_target, variance)
        result["model_under_test"] = {
            **attack_scores(lam, truth),
            "definition": "all n models as reference; IN = sampled D_f targets (unlearned), "
            "OUT = held-out targets (never seen)",
        }
    log.info(
        "U-LiRA against %s: balanced accuracy %.1f%% (AUC %.3f, %d shadows, %d+%d targets)",
        method_name,
        result["accuracy"],
        result["auc"],
        n_shadows,
        n_t,
        len(held),
    )
    return result
