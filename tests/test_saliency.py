import pytest
import torch

from salun.core.errors import SalunError
from salun.methods.saliency import (
    MaskGuard,
    SaliencyMask,
    compute_saliency_mask,
    threshold_saliency,
    top_k_mask,
)


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.rand(13, 7, generator=g),
        "b.bias": torch.rand(5, generator=g),
        "c.weight": torch.rand(3, 3, 3, generator=g) * 2,
    }


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.33, 0.5, 0.77, 0.99, 1.0])
def test_global_mask_hits_ratio_and_matches_independent_topk(ratio):
    scores = _scores()
    masks = threshold_saliency(scores, ratio)
    total = sum(s.numel() for s in scores.values())
    selected = sum(int(m.sum()) for m in masks.values())
    assert abs(selected - ratio * total) <= 1
    # independent top-k by a full sort over the flattened scores
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = int(round(ratio * total))
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[torch.argsort(flat, descending=True)[:k]] = True
    got = torch.cat([m.reshape(-1) for m in masks.values()])
    assert torch.equal(got, expected)


def test_ties_are_filled_to_exactly_k():
    scores = [torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0]), torch.tensor([2.0, 3.0])]
    masks = top_k_mask(scores, 3)
    assert sum(int(m.sum()) for m in masks) == 3
    assert masks[1][1] and masks[0][1] and masks[0][2]  # 3.0 and the first ties in order
    assert not masks[0][3] and not masks[1][0]


def test_per_layer_ratio():
    scores = _scores()
    masks = threshold_saliency(scores, 0.5, per_layer=True)
    for name, m in masks.items():
        assert abs(int(m.sum()) - 0.5 * scores[name].numel()) <= 0.5
        # within a layer, every selected score is >= every unselected one
        s = scores[name]
        if m.any() and (~m).any():
            assert s[m].min() >= s[~m].max()


def test_bad_ratio():
    with pytest.raises(SalunError, match="ratio"):
        threshold_saliency(_scores(), 0.0)
    with pytest.raises(SalunError, match="ratio"):
        threshold_saliency(_scores(), 1.5)


def test_compute_mask_on_model_save_load(digits_class, original, tmp_path):
    exp, _, _ = digits_class
    mask = compute_saliency_mask(original, exp.forget, exp.task, ratio=0.3)
    assert abs(mask.selected - 0.3 * mask.total) <= 1
    assert set(mask.masks) == {n for n, _ in original.named_parameters()}
    # the salient set is the top of |grad| of -CE on D_f, so it carries most of the gradient mass
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    loaded = SaliencyMask.load(path, original)
    assert all(torch.equal(loaded.masks[k], mask.masks[k]) for k in mask.masks)
    assert loaded.meta["ratio"] == "0.3" and loaded.meta["model_hash"] == mask.meta["model_hash"]
    assert all(v.dtype == torch.bool for v in loaded.masks.values())


def test_mask_is_deterministic_and_eval_mode(digits_class, original):
    exp, _, _ = digits_class
    before = {k: v.clone() for k, v in original.state_dict().items()}
    original.train()
    a = compute_saliency_mask(original, exp.forget, exp.task, 0.5)
    b = compute_saliency_mask(original, exp.forget, exp.task, 0.5)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    # eval mode: BatchNorm running statistics are untouched, and training mode is restored
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert original.training


def test_mask_mismatch_is_an_error(digits_class, original, tmp_path):
    exp, _, _ = digits_class
    mask = compute_saliency_mask(original, exp.forget, exp.task, 0.5)
    name = next(iter(mask.masks))
    bad = SaliencyMask({**mask.masks, name: mask.masks[name].reshape(-1)}, mask.meta)
    with pytest.raises(SalunError, match="does not match"):
        bad.check(original)
    with pytest.raises(SalunError, match="does not exist"):
        SaliencyMask.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_guard_keeps_non_salient_bit_identical(opt):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters()}
    mask = SaliencyMask(masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if opt == "sgd":
        o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    elif opt == "adam":
        o = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.05)
    else:
        o = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5)
    guard = MaskGuard(model, mask, o)
    for _ in range(20):
        loss = model(torch.randn(16, 6)).pow(2).mean()
        o.zero_grad()
        loss.backward()
        guard.before_step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        o.step()
        guard.after_step()
    for n, p in model.named_parameters():
        m = masks[n]
        assert torch.equal(p[~m], before[n][~m]), n  # bit-identical
        assert not torch.equal(p[m], before[n][m]), n  # salient weights did move


def test_gradient_masking_alone_is_not_enough():
    """The reference code's bug: masking only gradients lets weight decay move frozen weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    before = model.weight.detach().clone()
    o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    guard = MaskGuard(model, SaliencyMask(masks), o)
    model(torch.randn(3, 4)).sum().backward()
    guard.before_step()
    o.step()
    assert not torch.equal(model.weight, before)  # gradient was zero, yet the weight moved
    guard.after_step()
    assert torch.equal(model.weight, before)


def test_channels_last_scores_with_ties():
    """Conv weights in channels_last layout (as the demo uses) and many tied zeros."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(8, 4, 3, 3, generator=g)
    w[:, :2] = 0  # dead weights: exact ties at zero
    w_cl = w.contiguous(memory_format=torch.channels_last)
    k = int(0.6 * w.numel())  # forces tie filling at zero
    (m_cl,) = top_k_mask([w_cl], k)
    (m,) = top_k_mask([w], k)
    assert int(m_cl.sum()) == k and torch.equal(m_cl, m)


def test_saliency_independent_of_batching(digits_class, original):
    """Size-weighted batch gradients: the score does not depend on the batch size."""
    from salun.methods.saliency import gradient_saliency

    exp, _, _ = digits_class
    a, _ = gradient_saliency(original, exp.task.loader(exp.forget, 7, False), exp.task, False)
    b, _ = gradient_saliency(original, exp.task.loader(exp.forget, 64, False), exp.task, False)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7)
