import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from salun.core.errors import SalunError
from salun.eval.accuracy import predict
from salun.eval.agreement import (
    DEFINITIONS as AGREEMENT_DEFINITIONS,
)
from salun.eval.agreement import (
    l2_distance,
    random_init_copy,
    tug_of_war,
    zrf,
)
from salun.eval.mia import mia_efficacy
from salun.eval.mia_family import (
    DEFINITIONS as MIA_DEFINITIONS,
)
from salun.eval.mia_family import (
    SVC_FEATURES,
    entropy,
    loss_lr_mia,
    m_entropy,
    mia_family,
    probabilities,
    svc_mia,
)
from salun.tasks.classification.classification_objective import ClassificationTask

K = 10


def _dirichlet(rng, n, alpha):
    probs = rng.dirichlet(np.full(K, alpha), n)
    return probs, rng.integers(0, K, n)


def _confident(rng, n):
    """Members: the true label gets 0.97-0.999 of the mass."""
    labels = rng.integers(0, K, n)
    rest = rng.dirichlet(np.ones(K - 1), n)
    py = rng.uniform(0.97, 0.999, n)
    probs = np.zeros((n, K))
    for i, y in enumerate(labels):
        probs[i, np.arange(K) != y] = (1 - py[i]) * rest[i]
        probs[i, y] = py[i]
    return probs, labels


def _flat(rng, n):
    """Non-members: close to uniform, so low confidence and high entropy."""
    return _dirichlet(rng, n, 20.0)


# --- features ----------------------------------------------------------------------------------


def test_entropy_and_m_entropy_by_hand():
    p = np.array([[0.7, 0.2, 0.1]])
    assert entropy(p)[0] == pytest.approx(
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    )
    want = -0.3 * math.log(0.7) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9)
    assert m_entropy(p, np.array([0]))[0] == pytest.approx(want)
    # a confident wrong prediction: -ln(1e-30) for p_y = 0 plus -1 * ln(1e-30) for p_1 = 1
    assert m_entropy(np.array([[0.0, 1.0, 0.0]]), np.array([0]))[0] == pytest.approx(
        -2 * math.log(1e-30)
    )


# --- SVC family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("feature", SVC_FEATURES)
def test_svc_mia_near_chance_for_one_distribution(feature):
    # On indistinguishable members / non-members one RBF-SVC fit scores anywhere in ~10-90 %
    # depending on the draw (it fits noise), so "near chance" is checked on the mean of 5 draws.
    scores = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        retain, test, forget = (_dirichlet(rng, n, 0.3) for n in (400, 300, 200))
        r = svc_mia(retain, test, forget, feature, seed=seed)
        assert r["members"] == r["non_members"] == 300 and r["feature"] == feature
        scores.append(r["score"])
    assert 20 < np.mean(scores) < 80


@pytest.mark.parametrize("feature", SVC_FEATURES)
def test_svc_mia_separates_members_from_non_members(feature):
    rng = np.random.default_rng(1)
    retain, test = _confident(rng, 400), _flat(rng, 300)
    assert svc_mia(retain, test, _confident(rng, 100), feature)["score"] < 5
    assert svc_mia(retain, test, _flat(rng, 100), feature)["score"] > 95


def test_svc_confidence_is_mia_efficacy():
    rng = np.random.default_rng(2)
    retain, test, forget = (_dirichlet(rng, n, 0.5) for n in (300, 120, 80))
    conf = [p[np.arange(len(y)), y] for p, y in (retain, test, forget)]
    want = mia_efficacy(*conf, seed=3)["mia_efficacy"]
    assert svc_mia(retain, test, forget, "confidence", seed=3)["score"] == want


def test_svc_mia_bad_feature_and_bad_input():
    rng = np.random.default_rng(0)
    pred = _dirichlet(rng, 20, 1.0)
    with pytest.raises(SalunError, match="allowed: confidence, entropy, m_entropy"):
        svc_mia(pred, pred, pred, "entropie")
    with pytest.raises(SalunError, match="labels"):
        svc_mia(pred, pred, (pred[0], pred[1] + K), "entropy")


# --- loss LR -------------------------------------------------------------------------------------


def test_loss_lr_near_chance_for_one_distribution():
    rng = np.random.default_rng(0)
    retain, test, forget = (rng.gamma(2.0, 0.5, n) for n in (500, 300, 100))
    r = loss_lr_mia(retain, test, forget, seed=0)
    assert 0.4 < r["cv_auc"] < 0.6 and 40 < r["cv_accuracy"] < 60
    assert r["members"] == r["non_members"] == 300 and r["folds"] == 5


def test_loss_lr_separates_members_from_non_members():
    rng = np.random.default_rng(1)
    retain, test = rng.uniform(0, 0.1, 400), rng.uniform(1, 3, 300)
    r = loss_lr_mia(retain, test, rng.uniform(1, 3, 100), seed=0)
    assert r["cv_auc"] > 0.99 and r["cv_accuracy"] > 95 and r["forget_non_member"] > 95
    assert loss_lr_mia(retain, test, rng.uniform(0, 0.1, 100))["forget_non_member"] < 5


def test_loss_lr_is_seeded_and_checks_folds():
    rng = np.random.default_rng(3)
    args = (rng.gamma(2, 1, 200), rng.gamma(2.2, 1, 100), rng.gamma(2, 1, 50))
    assert loss_lr_mia(*args, seed=7) == loss_lr_mia(*args, seed=7)
    with pytest.raises(SalunError, match="folds"):
        loss_lr_mia(args[0], args[1][:3], args[2], folds=5)


def test_mia_family_runs_every_attack():
    rng = np.random.default_rng(4)
    out = mia_family(_confident(rng, 200), _flat(rng, 100), _flat(rng, 50))
    assert set(out) == set(MIA_DEFINITIONS)
    assert out["Loss-LR-MIA"]["cv_auc"] > 0.99
    assert all(out[f"SVC-MIA-{f}"]["score"] > 95 for f in SVC_FEATURES)


# --- agreement -----------------------------------------------------------------------------------


def test_tug_of_war():
    acc = {"forget": 10.0, "retain": 95.0, "test": 90.0}
    assert tug_of_war(acc, acc) == 1.0
    retrain = {"forget": 0.0, "retain": 100.0, "test": 92.0}
    assert tug_of_war(acc, retrain) == pytest.approx(0.9 * 0.95 * 0.98)
    metrics = {"UA": 90.0, "RA": 95.0, "TA": 90.0, "MIA-Efficacy": 3.0}  # salun metrics
    assert tug_of_war(metrics, retrain) == pytest.approx(0.9 * 0.95 * 0.98)
    assert tug_of_war({"forget": 0, "retain": 0, "test": 0}, {"UA": 0, "RA": 100, "TA": 100}) == 0
    with pytest.raises(SalunError, match="test accuracy"):
        tug_of_war({"forget": 1, "retain": 2}, retrain)
    with pytest.raises(SalunError, match="percentage"):
        tug_of_war({"forget": 0.1, "retain": 0.9, "test": 1.5e2}, retrain)


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = TensorDataset(x, y)
    for _ in range(60):  # plain gradient descent (torch.optim's first step is slow to import)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    return model.eval(), data, ClassificationTask(num_classes=3, progress=False)


def test_probabilities_match_predict():
    model, data, task = _tiny()
    probs, labels = probabilities(model, data, task, batch_size=10)
    pred = predict(model, data, task)
    assert probs.shape == (64, 3) and torch.equal(labels, pred.labels)
    assert torch.allclose(probs.sum(1), torch.ones(64))
    assert torch.allclose(probs[torch.arange(64), labels], pred.true_prob, atol=1e-6)


def test_random_init_copy():
    model, _, _ = _tiny()
    before = copy.deepcopy(model.state_dict())
    state = torch.get_rng_state()
    a, b = random_init_copy(model, seed=1), random_init_copy(model, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original kept
    assert l2_distance(a, b) == 0 and l2_distance(a, model) > 0
    assert l2_distance(random_init_copy(model, seed=2), a) > 0
    assert torch.equal(a[1].running_mean, torch.zeros(16)) and not a.training


def test_zrf():
    model, data, task = _tiny()
    assert zrf(model, model, data, task) == 1.0
    incompetent = random_init_copy(model, seed=0)
    score = zrf(model, incompetent, data, task)
    assert 0 <= score < 0.95
    assert zrf(incompetent, incompetent, data, task) == 1.0
    # a model that only mirrors the random one's outputs is maximally "forgotten"
    assert zrf(copy.deepcopy(incompetent), incompetent, data, task) == 1.0


def test_zrf_on_the_digits_cnn(digits_class):
    exp, model, _ = digits_class
    incompetent = random_init_copy(model, seed=0)
    trained = zrf(model, incompetent, exp.forget, exp.task)
    assert 0 <= trained < 1 and zrf(model, model, exp.forget, exp.task) == 1.0
    assert l2_distance(model, model) == 0.0


def test_l2_distance_by_hand():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0]]))
        a.bias.fill_(3.0)
        b.weight.copy_(torch.tensor([[1.0, 0.0]]))
        b.bias.fill_(1.0)
    assert l2_distance(a, a) == 0.0
    assert l2_distance(a, b) == pytest.approx(math.sqrt(4 + 4))
    assert l2_distance(a, b, relative=True) == pytest.approx(math.sqrt(8) / math.sqrt(2))
    bn = nn.BatchNorm1d(2)  # buffers do not count
    bn2 = copy.deepcopy(bn)
    bn2.running_mean.fill_(5.0)
    assert l2_distance(bn, bn2) == 0.0


def test_l2_distance_mismatched_models():
    with pytest.raises(SalunError, match="shape"):
        l2_distance(nn.Linear(2, 1), nn.Linear(3, 1))
    with pytest.raises(SalunError, match="different parameters"):
        l2_distance(nn.Linear(2, 1), nn.Linear(2, 1, bias=False))
    with pytest.raises(SalunError, match="all-zero"):
        zero = nn.Linear(2, 1)
        nn.init.zeros_(zero.weight), nn.init.zeros_(zero.bias)
        l2_distance(nn.Linear(2, 1), zero, relative=True)


def test_definitions_are_strings():
    for d in (MIA_DEFINITIONS, AGREEMENT_DEFINITIONS):
        assert d and all(isinstance(v, str) and v for v in d.values())
