"""The SalUn paper's remaining baselines (IU, BS, BE, SalUn-soft, Fisher forgetting): what each
method computes, and that each moves forget accuracy the documented way on digits (class 3).

Numbers measured on the ``digits_class`` fixture (original: 100 % forget, 100 % retain):
iu alpha=0.02 -> forget 52, retain 98; bs lr=1e-3 -> 10 / 99; be lr=5e-4 -> 2 / 93;
salun_soft (5 epochs) proximal -> 0 / 96, saliency -> 0 / 97; fisher code alpha=5e-7 -> 0 / 23
(Fisher noise is not selective here: retain falls with forget). IU is one Newton step and steep
in alpha: at 0.03 retain fell to 87, and an original trained in a fresh process gave 46 / 93 at
0.02 and 5 / 71 at 0.03, so the case uses 0.02. Margins below leave room.
"""

import copy

import pytest
import torch

from salun.core.errors import SalunError
from salun.eval.accuracy import predict
from salun.methods import UnlearnData, get_method
from salun.methods.be import last_linear
from salun.methods.fisher import diagonal_fisher
from salun.methods.iu import woodfisher_inverse_product
from salun.methods.saliency import gradient_saliency
from salun.methods.salun_soft import soft_scale, soft_threshold_


@pytest.fixture(autouse=True)
def _one_thread():
    # one thread: these small models run ~100x slower with two threads on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _acc(model, exp):
    return (
        predict(model, exp.forget, exp.task).accuracy,
        predict(model, exp.retain, exp.task).accuracy,
    )


def _unlearn(name, exp, model, seed=0, **params):
    return get_method(name, **params).unlearn(
        model, UnlearnData(exp.forget, exp.retain, seed), exp.task
    )


# name, params, least drop of forget accuracy (points), retain floor (None: not gentle)
CASES = [
    # 2026-12-04, another machine of the same kind: alpha 0.02 -> forget 83.6 / retain 99.1,
    # 0.03 -> 57.4 / 96.7, 0.05 -> 1.6 / 71.8: alpha 0.03 clears both bounds with a margin
    ("iu", {"alpha": 0.03}, 30, 85),
    ("bs", {"lr": 1e-3}, 50, 95),
    ("be", {"lr": 5e-4}, 50, 80),
    # re-measured with labels drawn afresh per batch (issue 10): retain 84.0 and 84.6 (was >= 90
    # with the former fixed label table)
    ("salun_soft", {"epochs": 5}, 50, 80),
    ("salun_soft", {"epochs": 5, "form": "saliency"}, 50, 80),
    ("fisher", {"form": "code", "alpha": 5e-7}, 40, None),
]


@pytest.mark.parametrize(("name", "params", "drop", "floor"), CASES)
def test_forget_accuracy_falls(name, params, drop, floor, digits_class, original):
    exp, _, _ = digits_class
    f0, r0 = _acc(original, exp)
    model = _unlearn(name, exp, original, **params)
    f1, r1 = _acc(model, exp)
    assert f1 <= f0 - drop, f"{name} {params}: forget {f0:.1f} -> {f1:.1f}"
    if floor is not None:
        assert r1 >= floor, f"{name} {params}: retain {r0:.1f} -> {r1:.1f}"


def test_woodfisher_product_matches_dense_inverse():
    g = torch.Generator().manual_seed(0)
    n, p, damping = 7, 12, 1e-2
    grads = torch.randn(n, p, generator=g)
    v = torch.randn(p, generator=g)
    dense = damping * torch.eye(p, dtype=torch.float64) + grads.double().T @ grads.double() / n
    expected = torch.linalg.solve(dense, v.double())
    got = woodfisher_inverse_product(iter(grads), v, damping, n)
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_be_returns_the_original_k_outputs(digits_class, original):
    exp, _, _ = digits_class
    before = [(n, p.shape, id(p)) for n, p in original.named_parameters()]
    keys = list(original.state_dict())
    _, layer = last_linear(original)
    model = _unlearn("be", exp, original, lr=5e-4)
    assert [(n, p.shape, id(p)) for n, p in model.named_parameters()] == before
    assert list(model.state_dict()) == keys
    assert not layer._forward_hooks
    x = next(iter(exp.task.loader(exp.forget, 4, False)))[0]
    assert model(x).shape == (4, exp.task.num_classes)


def test_soft_threshold_is_the_l1_prox():
    anchor = torch.zeros(10)
    param = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)  # |d| = 1..10
    tau = soft_threshold_([param], [anchor], [None], 0.3)  # k = 3: tau = 3rd smallest |d|
    assert tau == 3.0
    expected = torch.sign(torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)) * (
        torch.arange(1.0, 11.0) - 3
    ).clamp(min=0)
    assert torch.equal(param, expected)
    assert int((param == anchor).sum()) == 3


def test_soft_scale_saturates_at_the_hard_threshold():
    s = soft_scale([torch.tensor([0.0, 1.0, 2.0, 4.0])], 0.5)[0]
    assert torch.equal(s, torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_salun_soft_saliency_scales_the_update(digits_class, original):
    exp, _, _ = digits_class
    loader = exp.task.loader(exp.forget, 256, False)
    scores, _ = gradient_saliency(original, loader, exp.task, progress=False)
    names = list(scores)
    scale = dict(zip(names, soft_scale([scores[n] for n in names], 0.5), strict=True))
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    model = _unlearn("salun_soft", exp, original, epochs=2, form="saliency")
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    full = torch.cat([moved[n][scale[n] == 1] for n in names])
    part = torch.cat([moved[n][(scale[n] > 0) & (scale[n] < 1)] for n in names])
    still = torch.cat([moved[n][scale[n] == 0] for n in names])
    assert still.numel() > 0 and bool((still == 0).all())  # zero saliency: never moves
    assert float(full.mean()) > float(part.mean()) > 0


@pytest.mark.parametrize(("form", "power"), [("paper", 0.25), ("code", 0.5)])
def test_fisher_noise_has_the_documented_covariance(form, power, digits_class, original):
    exp, _, _ = digits_class
    params = {"alpha": 1e-8, "form": form, "batch_size": 32}
    fisher = diagonal_fisher(
        copy.deepcopy(original), exp.retain, exp.task, 32, torch.Generator().manual_seed(15485863)
    )
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    model = _unlearn("fisher", exp, original, **params)
    z = torch.cat(
        [
            ((p.detach() - before[n]) / (1e-8 / fisher[n].clamp(1e-6, 1e6)) ** power).flatten()
            for n, p in model.named_parameters()
        ]
    )
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_fisher_estimate_is_batch_size_free(digits_class, original):
    exp, _, _ = digits_class
    one = diagonal_fisher(original, exp.retain, exp.task, 1, torch.Generator().manual_seed(0))
    many = diagonal_fisher(original, exp.retain, exp.task, 64, torch.Generator().manual_seed(0))
    a = torch.cat([f.flatten() for f in one.values()])
    b = torch.cat([f.flatten() for f in many.values()])
    assert 0.7 < float(b.sum() / a.sum()) < 1.3  # same expectation, different variance


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("iu", {"alpha": 0}),
        ("iu", {"num_grads": 0}),
        ("iu", {"damping": -1.0}),
        ("bs", {"epsilon": 0}),
        ("salun_soft", {"form": "hard"}),
        ("salun_soft", {"mask_ratio": 1.5}),
        ("fisher", {"form": "exact"}),
        ("fisher", {"fisher_min": 1.0, "fisher_max": 0.5}),
        ("fisher", {"batch_size": 0}),
    ],
)
def test_bad_values_are_refused(name, params):
    with pytest.raises(SalunError):
        get_method(name, **params)
