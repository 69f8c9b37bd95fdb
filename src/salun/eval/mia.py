"""MIA-Efficacy: a membership-inference attack used as a forgetting score.

Definition (SalUn, Fan et al. ICLR 2024, App. C.3; after Song & Mittal, USENIX Security 2021):
the feature of a sample is the model's softmax probability of its true label. An RBF SVM,
sklearn ``SVC(C=3, gamma="auto", kernel="rbf")`` as in the reference code (``SVC_MIA.py``;
gamma = 1 / n_features = 1 on this one-dimensional feature), is fitted with members = a seeded
random sample of the retain set of the test set's size (label 1) and non-members = the test set
(label 0). MIA-Efficacy is the percentage of forget samples predicted non-member. Higher means the forget set looks unseen.
(The reference takes the first |test| retain samples; we draw them with a recorded seed.)

``gamma="scale"`` (1 / (n_features * Var(x)), this package's metric up to evaluator
salun-eval-2) is a different metric: on one model the two gave 28.3 and 88.3. It is kept as
``"MIA-Efficacy (gamma=scale)"`` in the extended metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import SVC

GAMMAS = ("auto", "scale")

MIA_DEFINITION = (
    "SVC(RBF, C=3, gamma=auto) on the true-label softmax probability; members = seeded random "
    "sample of D_r of size |test| (label 1), non-members = test set (label 0); "
    "MIA-Efficacy = % of D_f predicted non-member (the reference's SVC_MIA)"
)
MIA_SCALE_DEFINITION = MIA_DEFINITION.replace("gamma=auto", "gamma=scale").replace(
    " (the reference's SVC_MIA)", " (not the reference's metric; evaluator salun-eval-2's)"
)


def mia_efficacy(
    retain_conf: torch.Tensor | np.ndarray,
    test_conf: torch.Tensor | np.ndarray,
    forget_conf: torch.Tensor | np.ndarray,
    seed: int = 0,
    c: float = 3.0,
    gamma: str = "auto",
) -> dict[str, float | int | str]:
    """Fit the SVC attack and score the forget set; returns the score and what was used.

    ``gamma``: "auto" (the reference's, 1 / n_features) or "scale" (1 / (n_features Var x)).
    """
    if gamma not in GAMMAS:
        raise ValueError(f"unknown SVC gamma {gamma!r}; allowed: {', '.join(GAMMAS)}")
    retain = np.asarray(retain_conf, dtype=np.float64)
    test = np.asarray(test_conf, dtype=np.float64)
    forget = np.asarray(forget_conf, dtype=np.float64)
    if len(test) == 0 or len(retain) == 0 or len(forget) == 0:
        raise ValueError("MIA needs non-empty retain, test and forget sets")
    n = min(len(test), len(retain))
    rng = np.random.default_rng(seed)
    members = retain[rng.choice(len(retain), size=n, replace=False)]
    x = np.concatenate([members, test])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(len(test))])
    if np.unique(x).size == 1:  # degenerate: nothing to separate
        pred = np.zeros(len(forget))
    else:
        clf = SVC(C=c, kernel="rbf", gamma=gamma).fit(x, y)
        pred = clf.predict(forget[:, None])
    return {
        "mia_efficacy": 100.0 * float(np.mean(pred == 0)),
        "members": int(n),
        "non_members": int(len(test)),
        "seed": int(seed),
        "gamma": gamma,
    }
