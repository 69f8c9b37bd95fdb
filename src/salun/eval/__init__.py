"""Evaluation: UA / RA / TA and MIA-Efficacy, each with its written definition."""

from salun.eval.accuracy import predict
from salun.eval.classification import DEFINITIONS, EVAL_VERSION, avg_gap, evaluate_classifier
from salun.eval.mia import mia_efficacy

__all__ = [
    "DEFINITIONS",
    "EVAL_VERSION",
    "avg_gap",
    "evaluate_classifier",
    "mia_efficacy",
    "predict",
]
