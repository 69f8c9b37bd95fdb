"""Issue 10: fresh random labels, the reference MIA-Efficacy, the noise floor, Retrain-free
calibration (never reading the test set) and the review fixes (mask choice, SCRUB's weight,
Retrain's parameters, augmentation)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from salun.config import load_config
from salun.core.errors import SalunError
from salun.data import DatasetBundle
from salun.eval import mia_efficacy
from salun.methods import get_method
from salun.methods._fit import lr_at
from salun.methods.rl import fresh_label_loss
from salun.tasks.batches import WithPositions
from salun.tasks.classification.classification_objective import ClassificationTask


class _Recording(ClassificationTask):
    """A task whose loss records the labels it is asked to fit (no model needed)."""

    def loss(self, model, batch, labels=None):
        self.seen.append(labels.clone())
        return torch.zeros(())


def _draws(exclude_true, seed=0, epochs=2):
    task = _Recording(num_classes=10)
    task.seen = []
    y = torch.arange(64) % 10
    data = WithPositions(torch.utils.data.TensorDataset(torch.zeros(64, 1), y))
    loss = fresh_label_loss(task, seed, exclude_true)
    batches = []
    for _ in range(epochs):
        for batch in task.loader(data, 16, shuffle=True, seed=seed):
            loss(None, batch)
            batches.append(batch[1])
    return task.seen, batches


def test_fresh_labels_differ_between_batches_and_epochs_and_avoid_the_true_label():
    seen, true = _draws(exclude_true=True)
    assert len(seen) == 8
    for labels, y in zip(seen, true, strict=True):
        assert not torch.any(labels == y)  # the paper's y' != y
        assert labels.min() >= 0 and labels.max() < 10
    # batches 0 and 4 hold the same positions in the same order only if shuffles agree: compare
    # draws per position across the two epochs instead
    assert any(not torch.equal(a, b) for a, b in zip(seen[:4], seen[4:], strict=True))
    assert len({tuple(s.tolist()) for s in seen}) == len(seen)
    again, _ = _draws(exclude_true=True)
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))  # same seed


def test_fresh_labels_from_all_classes_sometimes_hit_the_true_label():
    seen, true = _draws(exclude_true=False, epochs=4)
    hits = sum(int((s == y).sum()) for s, y in zip(seen, true, strict=True))
    assert 0 < hits < 64 * 4 / 3  # ~1/10 of the draws


def test_labels_choice_is_checked():
    with pytest.raises(SalunError, match="allowed: all, other, fixed"):
        get_method("salun", labels="sometimes")


def test_mia_efficacy_equals_sklearn_svc_gamma_auto():
    rng = np.random.default_rng(3)
    retain, test, forget = rng.beta(6, 1, 300), rng.beta(2, 2, 120), rng.beta(3, 2, 80)
    got = mia_efficacy(retain, test, forget, seed=5)
    members = retain[np.random.default_rng(5).choice(300, size=120, replace=False)]
    x = np.concatenate([members, test])[:, None]
    y = np.concatenate([np.ones(120), np.zeros(120)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    expected = 100.0 * float(np.mean(clf.predict(forget[:, None]) == 0))
    assert got["mia_efficacy"] == expected and got["gamma"] == "auto"
    scale = mia_efficacy(retain, test, forget, seed=5, gamma="scale")["mia_efficacy"]
    clf_s = SVC(C=3, gamma="scale", kernel="rbf").fit(x, y)
    assert scale == 100.0 * float(np.mean(clf_s.predict(forget[:, None]) == 0))


def test_salun_use_mask_false_and_mask_ratio_conflict_are_refused_in_one_line():
    with pytest.raises(SalunError) as e:
        load_config("smoke/digits", ["unlearn.method=salun", "unlearn.use_mask=false"])
    assert "\n" not in str(e.value) and "use_mask=false" in str(e.value)
    with pytest.raises(SalunError, match="conflicts with mask.ratio"):
        load_config("smoke/digits", ["unlearn.params.mask_ratio=0.3"])
    load_config("smoke/digits", ["unlearn.params.mask_ratio=0.3", "mask.ratio=0.3"])
    load_config("smoke/digits", ["unlearn.method=rl", "unlearn.use_mask=false"])


def test_api_passes_mask_ratio_to_salun_soft_and_refuses_unmasked_salun(monkeypatch):
    import salun
    from salun.methods.salun_soft import SalUnSoft

    seen = {}

    def spy(self, model, data, task, mask=None):
        seen["ratio"] = self.mask_ratio
        return model

    monkeypatch.setattr(SalUnSoft, "unlearn", spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    # two sets: one dataset as both forget and retain is refused since issue 20
    forget = torch.utils.data.TensorDataset(torch.randn(6, 4), labels)
    retain = torch.utils.data.TensorDataset(torch.randn(6, 4), labels)
    salun.unlearn(model, forget, retain, method="salun_soft", mask_ratio=0.3, num_classes=3)
    assert seen["ratio"] == 0.3
    with pytest.raises(SalunError, match="mask=False"):
        salun.unlearn(model, forget, retain, method="salun", mask=False, num_classes=3)


def test_scrub_schedule_ignores_its_loss_weight():
    m = get_method("scrub", schedule="step", milestones=[1], ce_weight=0.5, lr=0.1)
    assert m.gamma == 0.1  # the schedule's own decay factor
    assert lr_at(m, 0) == pytest.approx(0.1) and lr_at(m, 1) == pytest.approx(0.01)
    m2 = dataclasses.replace(m, ce_weight=0.9)
    assert lr_at(m2, 1) == lr_at(m, 1)
    with pytest.raises(SalunError):
        get_method("scrub", ce_weight=-1.0)


def test_retrain_parameters_are_used(digits_class):
    from salun.run import retrain_recipe, unlearn_once

    exp, original, _ = digits_class
    recipe = retrain_recipe(exp.cfg, {"epochs": 1, "lr": 0.02})
    assert recipe.epochs == 1 and recipe.lr == 0.02
    with pytest.raises(SalunError, match="not part of a training recipe"):
        retrain_recipe(exp.cfg, {"lr_grid": [1.0]})
    a, ia = unlearn_once(exp, original, "retrain", {"epochs": 1})
    b, ib = unlearn_once(exp, original, "retrain", {"epochs": 2})
    assert ia["retrain"]["cache_key"] != ib["retrain"]["cache_key"]
    assert any(not torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_noise_floor_is_retrain_from_another_init(digits_class):
    from salun.run import evaluate, noise_floor, train_model

    exp, _, _ = digits_class
    retrain, _ = train_model(exp, "retrain")
    prime, _ = train_model(exp, "retrain_prime")
    assert any(not torch.equal(retrain.state_dict()[k], v) for k, v in prime.state_dict().items())
    floor = noise_floor(exp, evaluate(exp, retrain))
    assert floor["init_seed"] == exp.cfg.seed + 1000 and floor["floor"] >= 0
    _, again = train_model(exp, "retrain_prime")
    assert again["cache_hit"]


def test_augmentation_keeps_shape_and_is_seeded():
    from salun.data.augment import augment

    x = torch.rand(3, 8, 8)
    torch.manual_seed(0)
    a = [augment(x) for _ in range(8)]
    torch.manual_seed(0)
    b = [augment(x) for _ in range(8)]
    assert all(t.shape == x.shape for t in a)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert any(not torch.equal(t, x) for t in a)


@pytest.fixture(scope="module")
def val_exp(cache_dir):
    from salun.run import prepare, train_model

    cfg = load_config(
        "smoke/digits",
        [f"cache_dir={cache_dir}", "train.epochs=8", "data.val_fraction=0.2", "progress=false"],
    )
    exp = prepare(cfg)
    return exp, train_model(exp, "original")[0]


def _poisoned(exp):
    test = copy.copy(exp.bundle.test)
    test.images = torch.full_like(test.images, float("nan"))
    test.labels = torch.full_like(test.labels, 10**6)
    bundle = DatasetBundle(**{**exp.bundle.__dict__, "test": test})
    return dataclasses.replace(exp, bundle=bundle)


def test_calibrated_run_never_reads_the_test_set(val_exp):
    from salun.run import unlearn_once

    exp, original = val_exp
    params = {"epochs": 2, "lr": 0.01, "batch_size": 64, "lr_grid": [0.5, 2.0]}
    clean, info = unlearn_once(exp, original, "salun", params, mask=True)
    poisoned, info_p = unlearn_once(_poisoned(exp), original, "salun", params, mask=True)
    record = info["_calibration"]
    assert "skipped" not in record and record["scenario"] == "class"
    assert len(record["runs"]) == 2 and len(record["runs"][0]["trajectory"]) == 3
    assert record == info_p["_calibration"]
    assert all(torch.equal(v, poisoned.state_dict()[k]) for k, v in clean.state_dict().items())
    assert not any(np.isnan(r["best_estimate"]) for r in record["runs"])


def test_calibration_files_and_skip_without_validation(val_exp, digits_class, tmp_path):
    from salun.run import save_calibration, unlearn_once

    exp, original = val_exp
    _, info = unlearn_once(exp, original, "rl", {"epochs": 1, "calibrate": True, "lr_grid": [1]})
    save_calibration(tmp_path, info["_calibration"])
    assert (tmp_path / "calibration.json").is_file() and (tmp_path / "calibration.png").is_file()
    exp0, original0, _ = digits_class  # no validation split
    _, info0 = unlearn_once(exp0, original0, "salun", {"epochs": 1}, mask=True)
    assert "no validation split" in info0["calibration"]["skipped"]


def test_calibration_returns_the_original_when_no_step_is_safe(val_exp):
    """Gradient ascent at a destructive lr: every epoch is worse than the original by the
    estimate, so calibration hands back the original unchanged and says so."""
    from salun.run import unlearn_once

    exp, original = val_exp
    before = {k: v.clone() for k, v in original.state_dict().items()}
    params = {"epochs": 2, "lr": 5.0, "calibrate": True, "lr_grid": [1.0, 2.0]}
    model, info = unlearn_once(exp, original, "ga", params)
    chosen = info["_calibration"]["chosen"]
    assert chosen["epoch"] == 0 and chosen["no_safe_step"] is True
    assert info["calibration"]["no_safe_step"] is True
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_calibration_targets_are_fixed_by_the_original(val_exp):
    """The estimate's targets (MIA-Efficacy included) come from the original, not from the
    model being scored: a model that only lowers its confidence cannot move its target."""
    from salun.methods._calibrate import Estimator

    exp, original = val_exp
    est = Estimator(original, exp.forget, exp.retain, exp.val, exp.task, seed=0)
    assert set(est.targets) == {"UA", "MIA-Efficacy", "RA", "TA"}
    flat = copy.deepcopy(original)
    with torch.no_grad():
        for p in flat.parameters():
            p.mul_(0.05)  # shrinks every logit: confidence falls everywhere
    assert est(flat)["targets"] == est(original)["targets"] == est.targets
