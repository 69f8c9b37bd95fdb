"""Contract over every registered method: it runs, respects a saliency mask bit-for-bit
(SGD with momentum and weight decay, and Adam/AdamW), and is deterministic under a seed."""

import copy

import pytest
import torch

from salun.core.errors import SalunError
from salun.methods import UnlearnData, get_method, list_methods, mask_policy
from salun.methods.saliency import SaliencyMask

FAST_ALL = {"epochs": 1, "batch_size": 64}


def fast(name, **extra):
    """Short settings, limited to the fields the method has (training-free methods have none)."""
    import dataclasses

    from salun.core.registry import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS.get(name))}
    return {k: v for k, v in {**FAST_ALL, **extra}.items() if k in fields}


def _data(exp, seed=0):
    return UnlearnData(forget=exp.forget, retain=exp.retain, seed=seed)


def _random_mask(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SaliencyMask(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}
    )


def test_registry_has_the_core_methods():
    assert {"retrain", "ft", "ga", "rl", "l1_sparse", "salun"} <= set(list_methods())


@pytest.mark.parametrize("name", list_methods("classification"))
def test_one_epoch_runs_and_changes_weights(name, digits_class, original):
    exp, _, _ = digits_class
    before = copy.deepcopy(original.state_dict())
    model = get_method(name, **fast(name)).unlearn(original, _data(exp), exp.task)
    assert not model.training
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changed


def _accepts_mask(name):
    from salun.core.registry import METHODS

    return mask_policy(METHODS.get(name)) != "refused"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("name", [m for m in list_methods("classification") if _accepts_mask(m)])
def test_non_salient_weights_bit_identical(name, optimizer, digits_class, original):
    exp, _, _ = digits_class
    mask = _random_mask(original)
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    lr = 1e-3 if optimizer != "sgd" else 0.05
    method = get_method(
        name, **fast(name, optimizer=optimizer, lr=lr, weight_decay=0.01, momentum=0.9)
    )
    model = method.unlearn(original, _data(exp), exp.task, mask=mask)
    moved = 0
    for n, p in model.named_parameters():
        m = mask.masks[n]
        assert torch.equal(p.detach()[~m], before[n][~m]), f"{name}/{optimizer}: {n} moved"
        moved += int((p.detach()[m] != before[n][m]).sum())
    assert moved > 0, "salient weights should be updated"


def test_retrain_refuses_a_mask(digits_class, original):
    exp, _, _ = digits_class
    with pytest.raises(SalunError, match="takes no mask"):
        get_method("retrain", **fast("retrain")).unlearn(
            original, _data(exp), exp.task, mask=_random_mask(original)
        )


@pytest.mark.parametrize("name", list_methods("classification"))
def test_same_seed_same_weights(name, digits_class):
    exp, original, _ = digits_class
    a = get_method(name, **fast(name)).unlearn(copy.deepcopy(original), _data(exp, 3), exp.task)
    b = get_method(name, **fast(name)).unlearn(copy.deepcopy(original), _data(exp, 3), exp.task)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_unknown_method_and_parameter():
    with pytest.raises(SalunError, match="Did you mean 'salun'"):
        get_method("saluN")
    with pytest.raises(SalunError, match="parameter of method 'ga'"):
        get_method("ga", learning_rate=0.1)
    with pytest.raises(SalunError, match="optimizer"):
        get_method("ft", optimizer="lion")
    with pytest.raises(SalunError, match="form"):
        get_method("salun", form="paperish")


def test_empty_forget_set_is_an_error(digits_class, original):
    exp, _, _ = digits_class
    empty = torch.utils.data.Subset(exp.forget, [])
    with pytest.raises(SalunError, match="forget set is empty"):
        get_method("salun", **fast("salun")).unlearn(
            original, UnlearnData(empty, exp.retain), exp.task
        )
