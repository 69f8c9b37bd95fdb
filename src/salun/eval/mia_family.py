"""Membership-inference attacks beyond MIA-Efficacy: more SVC features and a loss-based attack.

* :func:`svc_mia` - the SVC attack of :mod:`salun.eval.mia` on other per-sample features of the
  softmax output (Song & Mittal, USENIX Security 2021), as the SalUn / "Model Sparsity" code
  (Jia et al., NeurIPS 2023) reports them: ``confidence``, ``entropy`` and ``m_entropy``.
* :func:`loss_lr_mia` - a logistic-regression attack on the per-sample loss, cross-validated
  (the "simple MIA" of Kurmanji et al., NeurIPS 2023, and the NeurIPS 2023 unlearning challenge
  starter kit).

All attacks use the same member / non-member sets as MIA-Efficacy: members = a seeded random
sample of the retain set of the test set's size (label 1), non-members = the test set (label 0).
Scores are percentages of the forget set predicted non-member (higher = looks unseen).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from salun.core.errors import SalunError, unknown_choice
from salun.eval.mia import mia_efficacy

logger = logging.getLogger(__name__)

SVC_FEATURES = ("confidence", "entropy", "m_entropy")
LOG_FLOOR = 1e-30  # logs of probabilities are clamped at log(1e-30) ~ -69, as in the reference code

_SVC_PROTOCOL = (
    "SVC(RBF, C=3, gamma=auto) on {feat}; members = seeded random sample of D_r of size |test| "
    "(label 1), non-members = test set (label 0); score = % of D_f predicted non-member"
)

DEFINITIONS: dict[str, str] = {
    "SVC-MIA-confidence": _SVC_PROTOCOL.format(feat="the true-label softmax probability p_y"),
    "SVC-MIA-entropy": _SVC_PROTOCOL.format(
        feat="the softmax entropy -sum_i p_i ln p_i (logs clamped at ln 1e-30)"
    ),
    "SVC-MIA-m_entropy": _SVC_PROTOCOL.format(
        feat="the modified entropy -(1-p_y) ln p_y - sum_{i!=y} p_i ln(1-p_i) "
        "(Song & Mittal 2021; logs clamped at ln 1e-30)"
    ),
    "Loss-LR-MIA": (
        "logistic regression on the standardised per-sample cross-entropy -ln p_y; members = "
        "seeded random sample of D_r of size |test| (label 1), non-members = test set (label 0); "
        "cv_accuracy (%) and cv_auc (0-1) from seeded stratified K-fold cross-validation "
        "(chance: 50 % / 0.5); forget_non_member = % of D_f the attack fitted on all "
        "members/non-members predicts non-member"
    ),
}


@torch.no_grad()
def probabilities(
    model: nn.Module, dataset, task, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[N, K]`` (float32, CPU) and true labels ``[N]`` of ``dataset``.

    Runs ``model`` in eval mode (restoring its mode afterwards) over the task's loader, in order.
    """
    was_training = model.training
    model.eval()
    probs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for batch in task.loader(dataset, batch_size, shuffle=False):
        x, y, _ = task.batch(batch)
        probs.append(F.softmax(task.logits(model, x).float(), dim=1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not probs:
        return torch.zeros(0, getattr(task, "num_classes", 0)), torch.zeros(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels).long()


def _as_probs(pred: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, labels)`` as float64 / int64 arrays, checked for shape."""
    try:
        probs, labels = pred
    except (TypeError, ValueError):
        raise SalunError(f"{name} must be a (probs [N, K], labels [N]) pair") from None
    p = np.asarray(probs.cpu() if torch.is_tensor(probs) else probs, dtype=np.float64)
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels, dtype=np.int64)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
        raise SalunError(
            f"{name} must be probs [N, K] and labels [N], got shapes {p.shape} and {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise SalunError(f"{name} labels must lie in [0, {p.shape[1]}), got {y.min()}..{y.max()}")
    return p, y


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.clip(x, LOG_FLOOR, None))


def confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True-label probability ``p_y`` (Song & Mittal, USENIX Security 2021)."""
    return probs[np.arange(len(labels)), labels]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy ``-sum_i p_i ln p_i`` (Song & Mittal, USENIX Security 2021)."""
    return -np.sum(probs * _log(probs), axis=1)


def m_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Modified entropy (Song & Mittal, USENIX Security 2021, eq. 6):
    ``Mentr(p, y) = -(1 - p_y) ln p_y - sum_{i != y} p_i ln(1 - p_i)``.

    Low for confident correct predictions, high for confident wrong ones. (The "Model Sparsity" /
    SalUn reference code indexes ``p[:, labels]`` column-wise and uses ``ln p_i`` for
    ``ln(1 - p_i)``; we follow the paper's formula.)
    """
    rows = np.arange(len(labels))
    py = probs[rows, labels]
    others = probs * _log(1.0 - probs)
    others[rows, labels] = 0.0
    return -(1.0 - py) * _log(py) - others.sum(axis=1)


def _feature(pred: tuple[np.ndarray, np.ndarray], feature: str) -> np.ndarray:
    probs, labels = pred
    if feature == "confidence":
        return confidence(probs, labels)
    if feature == "entropy":
        return entropy(probs)
    return m_entropy(probs, labels)


def svc_mia(
    retain_pred,
    test_pred,
    forget_pred,
    feature: str,
    seed: int = 0,
    c: float = 3.0,
) -> dict[str, Any]:
    """SVC membership-inference attack on one softmax feature (Song & Mittal, USENIX Security
    2021; the ``SVC_MIA`` of the "Model Sparsity" / SalUn code, Jia et al. NeurIPS 2023).

    Objective: % of the forget set that an RBF SVC, trained to tell retain members from test
    non-members by ``feature``, predicts non-member.

    Args:
        retain_pred, test_pred, forget_pred: ``(probs [N, K], labels [N])`` pairs, e.g. from
            :func:`probabilities`.
        feature: ``"confidence"`` (p_y), ``"entropy"`` or ``"m_entropy"`` (see :data:`DEFINITIONS`).
        seed: Seed of the member sample drawn from the retain set.
        c: SVC regularisation (the reference uses 3).

    Returns:
        ``{"feature", "score", "members", "non_members", "seed"}``; ``score`` in percent.
        ``feature="confidence"`` gives exactly :func:`salun.eval.mia.mia_efficacy`.

    Raises:
        SalunError: Unknown ``feature`` or malformed inputs.
    """
    if feature not in SVC_FEATURES:
        raise unknown_choice("SVC-MIA feature", feature, SVC_FEATURES)
    retain = _feature(_as_probs(retain_pred, "retain_pred"), feature)
    test = _feature(_as_probs(test_pred, "test_pred"), feature)
    forget = _feature(_as_probs(forget_pred, "forget_pred"), feature)
    r = mia_efficacy(retain, test, forget, seed=seed, c=c)
    return {
        "feature": feature,
        "score": r["mia_efficacy"],
        "members": r["members"],
        "non_members": r["non_members"],
        "seed": r["seed"],
    }


def loss_lr_mia(
    retain_loss,
    test_loss,
    forget_loss,
    seed: int = 0,
    folds: int = 5,
) -> dict[str, Any]:
    """Logistic-regression MIA on the per-sample loss (the "simple MIA" of Kurmanji et al.,
    NeurIPS 2023, "Towards unbounded machine unlearning", and the NeurIPS 2023 unlearning
    challenge starter kit).

    Objective: how well a 1-D logistic regression on the standardised loss tells retain members
    from test non-members (cross-validated accuracy / AUC; chance 50 % / 0.5), and the % of the
    forget set it predicts non-member.

    Members are a seeded random sample of the retain set of the test set's size (label 1),
    non-members the test set (label 0), as in MIA-Efficacy. (The starter kit attacks forget vs
    test instead; we keep one member set for all attacks so they are comparable.) The scaler is
    fitted inside each fold.

    Returns:
        ``{"cv_accuracy" (%), "cv_auc" (0-1), "forget_non_member" (%), "members",
        "non_members", "folds", "seed"}``.

    Raises:
        SalunError: Empty inputs or fewer samples per class than ``folds`` (or ``folds < 2``).
    """
    retain = np.asarray(retain_loss, dtype=np.float64).ravel()
    test = np.asarray(test_loss, dtype=np.float64).ravel()
    forget = np.asarray(forget_loss, dtype=np.float64).ravel()
    if len(retain) == 0 or len(test) == 0 or len(forget) == 0:
        raise SalunError("loss-LR MIA needs non-empty retain, test and forget losses")
    n = min(len(test), len(retain))
    if folds < 2 or n < folds:
        raise SalunError(
            f"loss-LR MIA folds={folds} needs folds >= 2 and at least that many members and "
            f"non-members, got {n} members and {len(test)} non-members"
        )
    rng = np.random.default_rng(seed)
    members = retain[rng.choice(len(retain), size=n, replace=False)]
    x = np.concatenate([members, test])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(len(test))])

    def attack():
        return make_pipeline(StandardScaler(), LogisticRegression())

    if np.unique(x).size == 1:  # degenerate: nothing to separate
        logger.warning("loss-LR MIA: all member/non-member losses are equal; attack at chance")
        acc, auc, pred = 100.0 * max(n, len(test)) / len(y), 0.5, np.zeros(len(forget))
    else:
        correct, scores = np.zeros(len(y)), np.zeros(len(y))
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train, held in cv.split(x, y):
            clf = attack().fit(x[train], y[train])
            correct[held] = clf.predict(x[held]) == y[held]
            scores[held] = clf.predict_proba(x[held])[:, 1]
        acc = 100.0 * float(correct.mean())
        auc = float(roc_auc_score(y, scores))
        pred = attack().fit(x, y).predict(forget[:, None])
    return {
        "cv_accuracy": acc,
        "cv_auc": auc,
        "forget_non_member": 100.0 * float(np.mean(pred == 0)),
        "members": int(n),
        "non_members": int(len(test)),
        "folds": int(folds),
        "seed": int(seed),
    }


def true_label_loss(pred) -> np.ndarray:
    """Per-sample cross-entropy ``-ln p_y`` from a ``(probs, labels)`` pair (clamped at 1e-30)."""
    probs, labels = _as_probs(pred, "pred")
    return -_log(confidence(probs, labels))


def mia_family(retain_pred, test_pred, forget_pred, seed: int = 0) -> dict[str, Any]:
    """Every attack of this module from ``(probs, labels)`` pairs of retain, test and forget.

    Returns ``{"SVC-MIA-<feature>": svc_mia(...) for each feature, "Loss-LR-MIA":
    loss_lr_mia(...)}`` with the loss taken as ``-ln p_y`` (see :data:`DEFINITIONS`).
    """
    out: dict[str, Any] = {
        f"SVC-MIA-{f}": svc_mia(retain_pred, test_pred, forget_pred, f, seed=seed)
        for f in SVC_FEATURES
    }
    out["Loss-LR-MIA"] = loss_lr_mia(
        true_label_loss(retain_pred),
        true_label_loss(test_pred),
        true_label_loss(forget_pred),
        seed=seed,
    )
    return out
