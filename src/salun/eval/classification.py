"""Classification unlearning metrics (SalUn, Fan et al., ICLR 2024, §5):
UA = 100 - accuracy on D_f; RA = accuracy on D_r; TA = accuracy on the test set (without the
forgotten class in class-wise forgetting); MIA-Efficacy (see :mod:`salun.eval.mia`);
Avg. Gap = mean over (UA, MIA-Efficacy, RA, TA) of |method - Retrain|.
"""

from __future__ import annotations

import math
import time
from typing import Any

import sklearn
import torch

from salun.eval.accuracy import predict
from salun.eval.agreement import DEFINITIONS as AGREEMENT_DEFINITIONS
from salun.eval.agreement import l2_distance, random_init_copy, tug_of_war, zrf
from salun.eval.mia import MIA_DEFINITION, MIA_SCALE_DEFINITION, mia_efficacy
from salun.eval.mia_family import DEFINITIONS as MIA_FAMILY_DEFINITIONS
from salun.eval.mia_family import mia_family

# salun-eval-3: MIA-Efficacy (and the SVC family) with gamma="auto" as in the reference code;
# salun-eval-2 used gamma="scale" (kept as "MIA-Efficacy (gamma=scale)").
EVAL_VERSION = "salun-eval-3"
METRICS = ("UA", "MIA-Efficacy", "RA", "TA")

DEFINITIONS = {
    "UA": "100 - top-1 accuracy (%) on the forget set D_f",
    "RA": "top-1 accuracy (%) on the retain set D_r",
    "TA": "top-1 accuracy (%) on the test set (class-wise: without the forgotten class)",
    "MIA-Efficacy": MIA_DEFINITION,
    "MIA-Efficacy (gamma=scale)": MIA_SCALE_DEFINITION,
    "RTE": "wall-clock seconds of unlearning, including the saliency mask when one is computed",
    "Avg. Gap": "mean over UA, MIA-Efficacy, RA, TA of |method - Retrain| on the same split",
    **MIA_FAMILY_DEFINITIONS,
    **AGREEMENT_DEFINITIONS,
}


def evaluate_classifier(
    model: torch.nn.Module,
    forget,
    retain,
    test,
    task,
    mia_seed: int = 0,
    batch_size: int = 512,
    extended: bool = True,
) -> dict[str, Any]:
    """UA, RA, TA and MIA-Efficacy of ``model``, with definitions and versions.

    With ``extended``: the MIA family (SVC on confidence / entropy / modified entropy, loss-LR
    with stratified cross-validation) and ZRF against a randomly initialised copy.
    """
    start = time.perf_counter()
    pf = predict(model, forget, task, batch_size)
    pr = predict(model, retain, task, batch_size)
    pt = predict(model, test, task, batch_size)
    mia = mia_efficacy(pr.true_prob, pt.true_prob, pf.true_prob, seed=mia_seed)
    extra: dict[str, Any] = {}
    if extended:
        scale = mia_efficacy(pr.true_prob, pt.true_prob, pf.true_prob, mia_seed, gamma="scale")
        extra["MIA-Efficacy (gamma=scale)"] = scale["mia_efficacy"]
        extra["mia_family"] = mia_family(pr.pair, pt.pair, pf.pair, seed=mia_seed)
        extra["ZRF"] = zrf(model, random_init_copy(model, seed=mia_seed), forget, task, batch_size)
    return {
        "UA": 100.0 - pf.accuracy,
        "MIA-Efficacy": mia["mia_efficacy"],
        "RA": pr.accuracy,
        "TA": pt.accuracy,
        **extra,
        "sizes": {"forget": len(pf.labels), "retain": len(pr.labels), "test": len(pt.labels)},
        "mia": mia,
        "eval_seconds": round(time.perf_counter() - start, 3),
        "definitions": DEFINITIONS,
        "evaluator": {
            "version": EVAL_VERSION,
            "sklearn": sklearn.__version__,
            "torch": torch.__version__,
        },
    }


def avg_gap(metrics: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Per-metric |method - reference|, their mean ("Avg. Gap") and the tug-of-war score."""
    gaps = {m: abs(float(metrics[m]) - float(reference[m])) for m in METRICS}
    valid = [g for g in gaps.values() if not math.isnan(g)]
    gaps["Avg. Gap"] = sum(valid) / len(valid) if valid else float("nan")
    gaps["ToW"] = tug_of_war(metrics, reference)
    return gaps


def compare_to_retrain(model: torch.nn.Module, retrain: torch.nn.Module) -> dict[str, float]:
    """Weight-space distance to Retrain (absolute and relative to Retrain's norm)."""
    return {
        "L2-distance": l2_distance(model, retrain),
        "L2-distance-relative": l2_distance(model, retrain, relative=True),
    }
