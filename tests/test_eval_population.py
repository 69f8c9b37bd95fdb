"""Model-population attacks: U-LiRA (Hayes et al. 2024) and the NeurIPS 2023 challenge epsilon.

Fast tests: the formulas on synthetic numbers, and both attacks end to end on a tiny digits
setup at the smallest budget. The slow test checks U-LiRA's power (do nothing > retrain).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from salun.attacks.epsilon import (
    Population,
    bucket_points,
    epsilon_from_rates,
    epsilon_score,
    example_epsilon,
    forgetting_quality,
    retrain_population,
)
from salun.attacks.lira import (
    attack_scores,
    balanced_membership,
    equal_counts,
    heldout_targets,
    likelihood_ratio,
    ulira,
)
from salun.attacks.population import (
    PoolDataset,
    logit_confidences,
    model_seeds,
    pool_dataset,
    pool_keys_of_test,
    train_on,
    unlearn_copy,
)
from salun.config import load_config
from salun.core.errors import SalunError
from salun.run import prepare


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread (overrides conftest's 2): these models are tiny, and on a shared,
    loaded 2-core machine two OpenMP threads made each training ~100x slower (measured)."""
    torch.set_num_threads(1)


# ---------------------------------------------------------------- epsilon: formulas


def test_epsilon_from_rates_formula_and_special_cases():
    # eps_t = max(log((1 - d - FPR) / FNR), log((1 - d - FNR) / FPR)), max over thresholds
    assert epsilon_from_rates([0.25], [0.25], delta=0.0) == pytest.approx(math.log(3))
    assert epsilon_from_rates([0.25, 0.5], [0.5, 0.5], delta=0.0) == pytest.approx(math.log(2))
    assert epsilon_from_rates([0.5], [0.5], delta=1e-5) == 0.0  # clipped at 0
    assert epsilon_from_rates([0.0, 0.5], [0.0, 0.5]) == math.inf  # perfect separation
    assert math.isnan(epsilon_from_rates([0.0, 0.5], [0.5, 0.0]))  # all discarded
    # a threshold with one rate at zero is discarded, not taken as infinite
    assert epsilon_from_rates([0.0, 0.25], [0.5, 0.5], delta=0.0) == pytest.approx(math.log(2))


def test_example_epsilon_cases():
    retrained = np.array([0.5, 1.5, 2.5, 3.5])
    assert example_epsilon(np.array([0.0, 1.0, 2.0, 3.0]), retrained) < 1.0
    assert example_epsilon(np.full(4, 2.0), retrained) == 50.0  # peaky (do nothing)
    assert example_epsilon(retrained + 20, retrained) == 50.0  # perfectly separated
    assert example_epsilon(np.full(4, 1.0), np.full(4, 1.0)) == 0.0


def test_bucket_points_follow_the_challenge():
    # N = 4: max epsilon ceil(ln 3) = 2, buckets of 0.5 worth 1, 1/2, 1/4, 1/8, then 0
    eps = np.array([0.0, 0.49, 0.5, 1.2, 1.99, 2.0, 50.0])
    assert bucket_points(eps, 4).tolist() == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0, 0.0]
    assert bucket_points(np.array([0.7, 1.0]), 3).tolist() == [0.5, 0.0]  # ceil(ln 2) = 1


def test_forgetting_quality_separates_alike_from_shifted():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1, (4, 60))
    same = forgetting_quality(rng.normal(0, 1, (4, 60)), r)
    moved = forgetting_quality(rng.normal(3, 1, (4, 60)), r)
    assert same["forgetting_quality"] > moved["forgetting_quality"] + 0.1
    assert same["epsilon_mean"] < moved["epsilon_mean"]
    assert forgetting_quality(np.full((4, 60), 1.0), r)["forgetting_quality"] == 0.0
    with pytest.raises(SalunError, match="at least 3"):
        forgetting_quality(r[:2], r[:2])
    with pytest.raises(SalunError, match="models, examples"):
        forgetting_quality(r, r[:, :5])


# ---------------------------------------------------------------- U-LiRA: the attack itself


def _loo_accuracy(n, shift, seed, examples=40):
    rng = np.random.default_rng(seed)
    member = balanced_membership(n, examples, rng)
    phi = rng.normal(0, 3, examples)[None] + rng.normal(0, 1, (n, examples)) + shift * member
    scores = np.stack(
        [
            likelihood_ratio(phi[m], phi[np.arange(n) != m], member[np.arange(n) != m])
            for m in range(n)
        ]
    )
    return attack_scores(scores.reshape(-1), member.reshape(-1))["balanced_accuracy"]


def test_balanced_membership_and_equal_counts():
    member = balanced_membership(6, 50, np.random.default_rng(0))
    assert (member.sum(0) == 3).all()
    use_in, use_out = equal_counts(member[1:])  # leave model 0 out: counts 2/3 or 3/2
    assert (use_in.sum(0) == use_out.sum(0)).all() and (use_in.sum(0) == 2).all()
    assert not (use_in & ~member[1:]).any() and not (use_out & member[1:]).any()


def test_leave_one_out_is_at_chance_without_signal_and_above_with_it():
    # Unequal IN/OUT reference counts would bias this to ~43 % at n = 4 (fixed by equal_counts)
    null = np.mean([_loo_accuracy(4, 0.0, s) for s in range(40)])
    assert abs(null - 50) < 2.5
    assert np.mean([_loo_accuracy(4, 2.0, s) for s in range(10)]) > 65


# ---------------------------------------------------------------- on a tiny digits setup


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config(
        "smoke/digits",
        [
            f"cache_dir={tmp_path_factory.mktemp('pop-cache')}",
            "data.train_subset=200",
            "train.epochs=4",
            "train.batch_size=32",
            "progress=false",
        ],
    )
    return prepare(cfg)


def test_pool_keys_cover_both_parts(tiny):
    n = len(tiny.bundle.train)
    keys = np.concatenate([tiny.split.forget[:3], pool_keys_of_test(tiny, [0, 5])])
    data = pool_dataset(tiny, keys)
    assert isinstance(data, PoolDataset) and len(data) == 5
    x, y, key = data[3]
    assert key == n and torch.equal(x, tiny.bundle.test.images[0])
    assert y == int(tiny.bundle.test.labels[0]) == int(data.labels[3])
    with pytest.raises(SalunError, match="out of range"):
        pool_dataset(tiny, [n + len(tiny.bundle.test)])


def test_heldout_targets_are_unseen_and_label_matched(tiny):
    labels = tiny.bundle.train.labels.numpy()[tiny.split.forget[:8]]
    keys = heldout_targets(tiny, labels, np.random.default_rng(0))
    assert len(keys) == 8 and not np.isin(keys, tiny.split.train).any()
    assert sorted(PoolDataset(tiny.bundle, keys).labels.tolist()) == sorted(labels.tolist())


def test_train_on_and_unlearn_copy_are_seeded(tiny):
    half = tiny.split.train[::2]
    a = train_on(tiny, half, 5)
    cached = sorted((Path(tiny.cfg.cache_dir) / "population").glob("model-*.safetensors"))
    b = train_on(tiny, half, 5)  # from the cache: one file per (indices, seed, recipe)
    assert sorted((Path(tiny.cfg.cache_dir) / "population").glob("model-*.safetensors")) == cached
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = train_on(tiny, half, 6)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    forget = np.intersect1d(half, tiny.split.forget)
    retain = np.setdiff1d(half, forget)
    params = {"epochs": 1, "batch_size": 32}
    u1 = unlearn_copy(tiny, a, "salun", params, forget, retain, 3, use_mask=True)
    u2 = unlearn_copy(tiny, a, "salun", params, forget, retain, 3, use_mask=True)
    assert all(torch.equal(p, q) for p, q in zip(u1.parameters(), u2.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), u1.parameters(), strict=True))
    same = unlearn_copy(tiny, a, "none", None, forget, retain, 3)
    assert same is not a
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), same.parameters(), strict=True))
    assert model_seeds(0, 4, "ulira") == model_seeds(0, 4, "ulira")
    assert set(model_seeds(0, 4, "eps-unlearn")).isdisjoint(model_seeds(0, 4, "eps-retrain"))


def _population(exp, seeds):
    confs, ra, ta = [], [], []
    for s in seeds:
        model = train_on(exp, exp.split.train, s)
        confs.append(logit_confidences(model, exp.forget, exp.task))
        ra.append(100.0)
        ta.append(100.0)
    return Population("original", np.stack(confs), ra, ta, list(seeds))


def test_epsilon_score_end_to_end(tiny):
    n = 4
    reference = retrain_population(tiny, n)
    assert reference.confs.shape == (n, len(tiny.split.forget))
    cached = sorted((Path(tiny.cfg.cache_dir) / "population").glob("model-*.safetensors"))
    again = retrain_population(tiny, n)  # shared across methods through the model cache
    assert sorted((Path(tiny.cfg.cache_dir) / "population").glob("model-*.safetensors")) == cached
    assert np.array_equal(again.confs, reference.confs)
    assert again.ra == reference.ra and again.seeds == reference.seeds
    retrain = epsilon_score(tiny, "retrain", n_models=n, reference=reference)
    originals = _population(tiny, model_seeds(1, n, "eps-unlearn"))
    nothing = epsilon_score(
        tiny, "none", n_models=n, reference=reference, original=train_on(tiny, tiny.split.train, 0)
    )
    orig_fq = forgetting_quality(originals.confs, reference.confs)
    # Retrain-vs-Retrain must look better than Original-vs-Retrain and than doing nothing
    assert retrain["forgetting_quality"] > orig_fq["forgetting_quality"]
    assert retrain["epsilon_mean"] < orig_fq["epsilon_mean"]
    assert nothing["forgetting_quality"] == 0.0 and nothing["share_at_cap"] == 1.0
    assert 0 < retrain["forgetting_quality"] <= 1
    assert retrain["final_score"] == pytest.approx(
        retrain["forgetting_quality"] * retrain["ra_ratio"] * retrain["ta_ratio"]
    )
    assert retrain["n_models"] == n and retrain["delta"] == 1e-5 and retrain["max_epsilon"] == 2
    assert retrain["retrained"]["seeds"] == reference.seeds
    assert set(retrain["unlearned"]["seeds"]).isdisjoint(reference.seeds)
    assert len(retrain["per_example_epsilon"]) == len(tiny.split.forget)


def test_ulira_end_to_end(tiny):
    n, k = 4, 10
    params = {"epochs": 1, "batch_size": 32}
    model = train_on(tiny, tiny.split.train, 0)
    r = ulira(
        tiny, "salun", params, use_mask=True, n_shadows=n, n_targets=k, model_under_test=model
    )
    assert r["n_shadows"] == n and r["n_targets"] == k and len(r["model_seeds"]) == n
    assert r["decisions"] + r["undecided"] == n * 2 * k
    assert 0 <= r["accuracy"] <= 100 and r["chance"] == 50.0 and r["variance"] == "global"
    assert len(r["targets"]["forget"]) == k
    assert len(r["targets"]["heldout_train"]) + len(r["targets"]["heldout_test"]) == k
    assert np.isin(r["targets"]["forget"], tiny.split.forget).all()
    mut = r["model_under_test"]
    assert mut["decisions"] == 2 * k and 0 <= mut["balanced_accuracy"] <= 100
    with pytest.raises(SalunError, match="n_shadows >= 4"):
        ulira(tiny, "ft", n_shadows=3)


def test_ulira_detects_doing_nothing_but_not_retraining(tmp_path):
    """Power check (~15 s): memorising originals (150 images, 60 epochs, no weight decay),
    8 shadows. Measured over split seeds 0-4: do nothing 63-68 %, retrain 45-51 %."""
    cfg = load_config(
        "smoke/digits",
        [
            f"cache_dir={tmp_path}",
            "data.scenario=random",
            "data.forget_ratio=0.1",
            "data.train_subset=150",
            "train.epochs=60",
            "train.batch_size=32",
            "train.weight_decay=0",
            "progress=false",
        ],
    )
    exp = prepare(cfg)
    nothing = ulira(exp, "none", n_shadows=8, n_targets=15)
    retrain = ulira(exp, "retrain", n_shadows=8, n_targets=15)
    assert nothing["accuracy"] > retrain["accuracy"] + 5
    assert nothing["accuracy"] > 58 and abs(retrain["accuracy"] - 50) < 10
    assert nothing["auc"] > retrain["auc"]
