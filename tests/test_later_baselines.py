"""Behaviour of the later baselines (NegGrad+, SCRUB, Bad Teacher, SSD, CF-k, EU-k) on the
digits class-wise fixture. The contract (mask, determinism) is in test_methods_contract.py."""

import copy

import pytest
import torch

from salun.core.errors import SalunError
from salun.eval.accuracy import predict
from salun.methods import UnlearnData, get_method
from salun.methods.bad_teacher import retain_subset
from salun.methods.cf_k import last_layers
from salun.methods.saliency import SaliencyMask
from salun.methods.ssd import fisher_diagonal, ssd_selection


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    # tiny convolutions: one thread is as fast and avoids oversubscription on a shared CPU
    torch.set_num_threads(1)


def _data(exp, seed=0):
    return UnlearnData(forget=exp.forget, retain=exp.retain, seed=seed)


# Settings chosen for this 600-image fixture (the paper defaults are tuned for CIFAR and
# barely move it in a test-sized budget). Measured forget / retain accuracy after unlearning,
# from 100 / 100 before: neggrad_plus 0 / 97.8 on one original and 85.2 / 100 on another (the
# ascent is a threshold: alpha 0.85 gave 0 / 86 or a retain collapse to 29 depending on the
# original), hence its small margin; scrub 0 / 99.4, bad_teacher 3.3 / 88.5,
# ssd (reference="retain") 0 / 99.3, cf_k 57.4 / 100, eu_k 0 / 92.2.
FORGETTING = [
    # 2026-12-04, another machine of the same kind: lr 0.02 left 100 / 100 (no ascent yet), lr 0.03
    # gave 0 / 97.2 and 8 epochs at 0.02 gave 0 / 89.4: the threshold moves with the original
    ("neggrad_plus", dict(alpha=0.9, epochs=5, lr=0.03, batch_size=64), 10),
    ("scrub", dict(lr=0.002, epochs=3, batch_size=64), 50),
    ("bad_teacher", dict(epochs=2, lr=1e-3, batch_size=64), 50),
    ("ssd", dict(reference="retain"), 50),
    ("cf_k", dict(epochs=10, lr=0.01, optimizer="adam", batch_size=64), 20),
    ("eu_k", dict(epochs=2, batch_size=64), 50),
]


@pytest.mark.parametrize("name,params,margin", FORGETTING, ids=[f[0] for f in FORGETTING])
def test_forget_accuracy_drops(name, params, margin, digits_class, original):
    exp, _, _ = digits_class
    before = predict(original, exp.forget, exp.task).accuracy
    model = get_method(name, **params).unlearn(original, _data(exp), exp.task)
    after = predict(model, exp.forget, exp.task).accuracy
    retain = predict(model, exp.retain, exp.task).accuracy
    assert after <= before - margin, f"{name}: forget accuracy {before:.1f} -> {after:.1f}"
    assert retain >= 75, f"{name}: retain accuracy collapsed to {retain:.1f}"


def _frozen_state(model, k):
    """State entries (parameters and buffers) of every module outside the last k layers."""
    trainable = {id(m) for _, m in last_layers(model, k)}
    out = {}
    for name, module in model.named_modules():
        if id(module) in trainable:
            continue
        for key, value in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            out[f"{name}.{key}"] = value.detach().clone()
    return out


@pytest.mark.parametrize("name", ["cf_k", "eu_k"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_only_the_last_k_layers_move(name, optimizer, digits_class, original):
    exp, _, _ = digits_class
    assert [n for n, _ in last_layers(original, 2)] == ["hidden", "fc"]
    frozen = _frozen_state(original, 2)
    last = {
        n: p.detach().clone()
        for n, p in original.named_parameters()
        if n.split(".")[0] in ("hidden", "fc")
    }
    params = dict(epochs=1, batch_size=64, optimizer=optimizer, weight_decay=0.01)
    model = get_method(name, k=2, **params).unlearn(original, _data(exp), exp.task)
    after = _frozen_state(model, 2)
    for key, value in frozen.items():
        assert torch.equal(after[key], value), f"{name}: frozen {key} moved"
    moved = dict(model.named_parameters())
    assert all(not torch.equal(moved[n].detach(), v) for n, v in last.items())
    assert all(p.requires_grad for p in model.parameters()), "requires_grad must be restored"


def test_eu_k_reinitialises_the_last_layers_seeded(digits_class, original):
    exp, _, _ = digits_class
    a = get_method("eu_k", epochs=0).unlearn(copy.deepcopy(original), _data(exp, 5), exp.task)
    b = get_method("eu_k", epochs=0).unlearn(copy.deepcopy(original), _data(exp, 5), exp.task)
    assert not torch.equal(a.fc.weight, original.fc.weight)
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.hidden.bias, b.hidden.bias)


def test_cf_k_user_mask_is_anded(digits_class, original):
    exp, _, _ = digits_class
    g = torch.Generator().manual_seed(1)
    mask = SaliencyMask(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in original.named_parameters()}
    )
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    model = get_method("cf_k", epochs=1, batch_size=64).unlearn(
        original, _data(exp), exp.task, mask=mask
    )
    for n, p in model.named_parameters():
        m = (
            mask.masks[n]
            if n.split(".")[0] in ("hidden", "fc")
            else torch.zeros_like(mask.masks[n])
        )
        assert torch.equal(p.detach()[~m], before[n][~m]), n
        if n == "fc.weight":
            assert not torch.equal(p.detach()[m], before[n][m])


@pytest.mark.parametrize("use_mask", [False, True])
def test_ssd_changes_exactly_the_selected_weights(use_mask, digits_class, original):
    exp, _, _ = digits_class
    method = get_method("ssd", reference="retain")
    # importances computed independently, on an untouched copy
    ref = copy.deepcopy(original).eval()
    imp_f = fisher_diagonal(ref, exp.task.loader(exp.forget, method.batch_size, False), exp.task)
    imp_d = fisher_diagonal(ref, exp.task.loader(exp.retain, method.batch_size, False), exp.task)
    g = torch.Generator().manual_seed(2)
    mask = SaliencyMask(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in original.named_parameters()}
    )
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    model = method.unlearn(original, _data(exp), exp.task, mask=mask if use_mask else None)
    changed_total = 0
    for n, p in model.named_parameters():
        selected, beta = ssd_selection(imp_f[n], imp_d[n], method.alpha, method.lambda_)
        if use_mask:
            selected &= mask.masks[n]
        assert torch.equal(p.detach()[~selected], before[n][~selected]), n
        assert torch.allclose(p.detach()[selected], (before[n] * beta)[selected]), n
        assert bool((beta[selected] <= 1).all())
        changed_total += int((p.detach() != before[n]).sum())
    assert changed_total > 0


def test_bad_teacher_retain_subset_is_seeded(digits_class):
    exp, _, _ = digits_class
    a, b = retain_subset(exp.retain, 0.3, 0), retain_subset(exp.retain, 0.3, 0)
    assert len(a) == round(0.3 * len(exp.retain)) and a.indices == b.indices
    assert retain_subset(exp.retain, 0.3, 1).indices != a.indices


@pytest.mark.parametrize(
    "name,params",
    [
        ("neggrad_plus", dict(alpha=1.5)),
        ("scrub", dict(T=0.0)),
        ("scrub", dict(max_steps=-1)),
        ("bad_teacher", dict(retain_fraction=0.0)),
        ("ssd", dict(reference="test")),
        ("ssd", dict(alpha=0.0)),
        ("cf_k", dict(k=0)),
        ("eu_k", dict(k=0)),
    ],
)
def test_bad_values_are_refused(name, params):
    with pytest.raises(SalunError):
        get_method(name, **params)


def test_k_larger_than_the_model_is_refused(digits_class, original):
    exp, _, _ = digits_class
    with pytest.raises(SalunError, match="k must be between 1 and 10"):
        get_method("cf_k", k=11).unlearn(original, _data(exp), exp.task)
