"""Evaluation: UA / RA / TA, MIA-Efficacy and the MIA family, ToW, ZRF, distance to Retrain;
each with its written definition (recorded in metrics.json)."""

from salun.eval.accuracy import predict
from salun.eval.agreement import l2_distance, random_init_copy, tug_of_war, zrf
from salun.eval.classification import (
    DEFINITIONS,
    EVAL_VERSION,
    avg_gap,
    compare_to_retrain,
    evaluate_classifier,
)
from salun.eval.mia import mia_efficacy
from salun.eval.mia_family import loss_lr_mia, mia_family, probabilities, svc_mia

__all__ = [
    "DEFINITIONS",
    "EVAL_VERSION",
    "avg_gap",
    "compare_to_retrain",
    "evaluate_classifier",
    "l2_distance",
    "loss_lr_mia",
    "mia_efficacy",
    "mia_family",
    "predict",
    "probabilities",
    "random_init_copy",
    "svc_mia",
    "tug_of_war",
    "zrf",
]
