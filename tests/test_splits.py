import numpy as np
import pytest

from salun.core.errors import SalunError
from salun.data import Split, make_split, resolve_class

CLASSES = [str(i) for i in range(10)]


def _labels(n=500, seed=0):
    return np.random.default_rng(seed).integers(0, 10, n)


def test_random_split_by_ratio_and_count(tmp_path):
    tr, te = _labels(), _labels(100, 1)
    s = make_split(tr, te, CLASSES, dataset="x", forget_ratio=0.1, val_fraction=0.1, seed=3)
    assert len(s.forget) == round(0.1 * len(s.train))
    assert set(s.forget) | set(s.retain) == set(s.train)
    assert not set(s.forget) & set(s.retain)
    assert not set(s.val) & set(s.train)
    s2 = make_split(tr, te, CLASSES, dataset="x", forget_count=7, seed=3)
    assert len(s2.forget) == 7
    s.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.hash == s.hash
    assert all(
        np.array_equal(getattr(s, k), getattr(loaded, k)) for k in ("train", "forget", "test")
    )


def test_split_is_deterministic_and_original_shared_across_scenarios():
    tr, te = _labels(), _labels(100, 1)
    a = make_split(tr, te, CLASSES, dataset="x", forget_ratio=0.2, seed=5)
    b = make_split(tr, te, CLASSES, dataset="x", forget_ratio=0.2, seed=5)
    c = make_split(tr, te, CLASSES, dataset="x", scenario="class", forget_class=4, seed=5)
    assert a.hash == b.hash
    assert a.train_hash == c.train_hash  # the same original model serves both scenarios
    assert a.hash != make_split(tr, te, CLASSES, dataset="x", forget_ratio=0.2, seed=6).hash


def test_class_split_excludes_class_from_test():
    tr, te = _labels(), _labels(100, 1)
    s = make_split(tr, te, CLASSES, dataset="x", scenario="class", forget_class="4", seed=0)
    assert s.forget_class == 4
    assert (tr[s.forget] == 4).all() and (tr[s.retain] != 4).all()
    assert (te[s.test] != 4).all()
    assert len(s.forget) == (tr[s.train] == 4).sum()


def test_stratified_subset_keeps_proportions():
    tr = np.repeat(np.arange(10), 100)
    s = make_split(tr, tr, CLASSES, dataset="x", train_subset=200, seed=0)
    assert np.bincount(tr[s.train]).tolist() == [20] * 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"forget_ratio": 0.0}, r"forget_ratio must be in \(0, 1\)"),
        ({"forget_ratio": 1.0}, r"forget_ratio must be in \(0, 1\)"),
        ({"forget_ratio": 0.0001}, "forget set is empty"),
        ({"scenario": "class", "forget_class": 10}, r"out of range; allowed: 0..9"),
        ({"scenario": "class", "forget_class": "cat"}, "unknown forget_class 'cat'"),
        ({"scenario": "sideways"}, "unknown scenario"),
        ({"train_subset": 10**6}, "train_subset"),
    ],
)
def test_bad_split_arguments(kwargs, match):
    with pytest.raises(SalunError, match=match):
        make_split(_labels(), _labels(100, 1), CLASSES, dataset="x", **kwargs)


def test_class_without_samples_is_empty_forget():
    tr = np.zeros(50, dtype=int)
    with pytest.raises(SalunError, match="forget set is empty"):
        make_split(tr, tr, CLASSES, dataset="x", scenario="class", forget_class=3)


def test_resolve_class_by_name():
    assert resolve_class("Trouser", ["T-shirt/top", "Trouser"]) == 1


def test_corrupt_split_file(tmp_path):
    s = make_split(_labels(), _labels(100, 1), CLASSES, dataset="x", forget_ratio=0.1)
    s.save(tmp_path / "s.json")
    text = (tmp_path / "s.json").read_text().replace('"forget": [', '"forget": [499, ', 1)
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(SalunError, match="corrupt"):
        Split.load(tmp_path / "s.json")
