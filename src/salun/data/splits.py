"""One persisted split per experiment: train / validation / test, and forget / retain in train.

The same ``split.json`` is used by original training, Retrain, the saliency mask, unlearning and
evaluation. (The SalUn reference code drew its forget set from a differently seeded split than
the one the original model was trained on, so part of its "forget set" was never trained on.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salun.core.errors import SalunError
from salun.core.io import hash_obj, read_json, write_json

SPLIT_VERSION = 1
PARTS = ("train", "val", "test", "forget", "retain")


@dataclass
class Split:
    """Index sets. ``train``/``val``/``forget``/``retain`` index the dataset's training part;
    ``test`` indexes its test part (without the forgotten class in class-wise forgetting)."""

    dataset: str
    scenario: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    forget_class: int | None = None
    forget_class_name: str | None = None

    @property
    def train_hash(self) -> str:
        """Hash of what the original model is trained on (independent of the forget set)."""
        return hash_obj({"dataset": self.dataset, "train": self.train.tolist()})

    @property
    def hash(self) -> str:
        return hash_obj(self._arrays())

    def _arrays(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "scenario": self.scenario,
            "forget_class": self.forget_class,
            **{k: getattr(self, k).tolist() for k in ("train", "val", "test", "forget", "retain")},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPLIT_VERSION,
            "seed": self.seed,
            "forget_class_name": self.forget_class_name,
            "sizes": {
                k: int(len(getattr(self, k))) for k in ("train", "val", "test", "forget", "retain")
            },
            **self._arrays(),
            "hash": self.hash,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read ``split.json``; malformed files and broken invariants are one-line errors."""
        path = Path(path)
        where = f"split file {str(path)!r}"
        d = read_json(path, "split file")
        if not isinstance(d, dict):
            raise SalunError(f"{where} is not a JSON object")
        missing = [k for k in (*PARTS, "dataset", "scenario", "seed", "hash") if k not in d]
        if missing:
            raise SalunError(f"{where} lacks {', '.join(missing)}")
        arr = {}
        for k in PARTS:
            v = d[k]
            if not isinstance(v, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in v
            ):
                raise SalunError(f"{where}: {k} must be a list of integer indices")
            huge = next((i for i in v if not -(2**63) <= i < 2**63), None)
            if huge is not None:  # int64 cannot hold it; range checks below name the bounds
                raise SalunError(f"{where}: {k} holds the index {huge}, beyond any dataset")
            arr[k] = np.asarray(v, dtype=np.int64).reshape(-1)
        fc = d.get("forget_class")
        if fc is not None and (isinstance(fc, bool) or not isinstance(fc, int)):
            raise SalunError(f"{where}: forget_class must be an integer or null, got {fc!r}")
        if not isinstance(d["seed"], int) or not isinstance(d["dataset"], str):
            raise SalunError(f"{where}: seed must be an integer and dataset a string")
        if d["scenario"] not in ("class", "random"):
            raise SalunError(f"{where}: unknown scenario {d['scenario']!r}; allowed: class, random")
        if (d["scenario"] == "class") != (fc is not None):
            raise SalunError(
                f"{where}: scenario {d['scenario']!r} with forget_class {fc!r}; a class-wise "
                "split names its forget class, a random split none"
            )
        split = cls(
            dataset=d["dataset"],
            scenario=str(d["scenario"]),
            seed=int(d["seed"]),
            forget_class=fc,
            forget_class_name=d.get("forget_class_name"),
            **arr,
        )
        split.check(where=where)
        if split.hash != d.get("hash"):
            raise SalunError(f"{where} is corrupt: its hash does not match its indices")
        return split

    def check(self, n_train: int | None = None, n_test: int | None = None, where: str = "") -> None:
        """The invariants every split holds: no duplicates, indices in range, forget and retain
        disjoint with union = train, validation disjoint from train, forget non-empty."""
        where = where or "split"
        for k in PARTS:
            a = getattr(self, k)
            if len(np.unique(a)) != len(a):
                raise SalunError(f"{where}: {k} has duplicate indices")
            n = n_test if k == "test" else n_train
            if len(a) and (a.min() < 0 or (n is not None and a.max() >= n)):
                bad = int(a.min()) if a.min() < 0 else int(a.max())
                size = "" if n is None else f" (allowed 0..{n - 1})"
                raise SalunError(f"{where}: {k} index {bad} is out of range{size}")
        for k in ("forget", "retain", "test"):
            if len(getattr(self, k)) == 0:
                raise SalunError(f"{where}: the {k} set is empty")
        if len(np.intersect1d(self.forget, self.retain)):
            raise SalunError(f"{where}: forget and retain overlap; they must be disjoint")
        if not np.array_equal(np.union1d(self.forget, self.retain), np.unique(self.train)):
            raise SalunError(f"{where}: forget and retain together must be exactly the train set")
        if len(np.intersect1d(self.val, self.train)):
            raise SalunError(f"{where}: val and train overlap; they must be disjoint")

    def check_labels(self, train_labels: np.ndarray, test_labels: np.ndarray, where: str) -> None:
        """A class-wise split forgets exactly the forget class's training images (of its
        training part) and tests on no image of that class. Call after :meth:`check` with the
        dataset's sizes (indices in range)."""
        if self.scenario != "class" or self.forget_class is None:
            return
        fc = self.forget_class
        want = self.train[np.asarray(train_labels)[self.train] == fc]
        if not np.array_equal(np.sort(self.forget), np.sort(want)):
            other = np.setdiff1d(self.forget, want)
            what = (
                f"index {int(other[0])} of class {int(np.asarray(train_labels)[other[0]])}"
                if len(other)
                else f"{len(np.setdiff1d(want, self.forget))} images of class {fc} are not in it"
            )
            raise SalunError(
                f"{where}: the forget set of a class-wise split must be exactly class {fc}'s "
                f"training images; {what}"
            )
        leak = self.test[np.asarray(test_labels)[self.test] == fc]
        if len(leak):
            raise SalunError(
                f"{where}: test index {int(leak[0])} is of the forgotten class {fc}; a "
                "class-wise split tests on the other classes only"
            )


def _stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` indices keeping class proportions (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take))[: n - take.sum()]:
        take[i] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=t, replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def resolve_class(value: int | str, classes: list[str]) -> int:
    """Class index from an index or a class name; errors name the allowed range and names."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise SalunError(
                f"forget_class {value} is out of range; allowed: 0..{len(classes) - 1} "
                f"or a name ({', '.join(classes)})"
            )
        return value
    if value in classes:
        return classes.index(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return resolve_class(int(value), classes)
    raise SalunError(
        f"unknown forget_class {value!r}; allowed: 0..{len(classes) - 1} or one of {', '.join(classes)}"
    )


def make_split(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
    *,
    dataset: str,
    scenario: str = "random",
    forget_ratio: float | None = 0.1,
    forget_count: int | None = None,
    forget_class: int | str | None = None,
    val_fraction: float = 0.0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Split:
    """Draw a split. The train/val/test part depends only on (dataset, subset sizes, val
    fraction, seed), so random and class-wise scenarios with one seed share the original model."""
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    base = np.random.default_rng([seed, 0])
    pool = np.arange(len(train_labels))
    if train_subset is not None:
        if not 0 < train_subset <= len(pool):
            raise SalunError(f"data.train_subset must be in 1..{len(pool)}, got {train_subset}")
        pool = _stratified_subset(train_labels, train_subset, base)
    n_val = int(round(val_fraction * len(pool)))
    perm = base.permutation(pool)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    test = np.arange(len(test_labels))
    if test_subset is not None:
        if not 0 < test_subset <= len(test):
            raise SalunError(f"data.test_subset must be in 1..{len(test)}, got {test_subset}")
        test = _stratified_subset(test_labels, test_subset, np.random.default_rng([seed, 1]))

    fc: int | None = None
    rng = np.random.default_rng([seed, 2])
    if scenario == "random":
        if forget_count is not None:
            n_f = int(forget_count)
            if not 0 < n_f < len(train):
                raise SalunError(
                    f"data.forget_count must be in 1..{len(train) - 1}, got {forget_count}"
                )
        else:
            if forget_ratio is None or not 0 < forget_ratio < 1:
                raise SalunError(f"data.forget_ratio must be in (0, 1), got {forget_ratio!r}")
            n_f = int(round(forget_ratio * len(train)))
        if n_f == 0:
            raise SalunError(
                f"the forget set is empty: forget_ratio={forget_ratio} of {len(train)} training images"
            )
        forget = np.sort(rng.choice(train, size=n_f, replace=False))
    elif scenario == "class":
        if forget_class is None:
            raise SalunError("data.forget_class is required for scenario=class")
        fc = resolve_class(forget_class, classes)
        forget = train[train_labels[train] == fc]
        if len(forget) == 0:
            raise SalunError(
                f"the forget set is empty: class {fc} has no training images in this split"
            )
        test = test[test_labels[test] != fc]
    else:
        raise SalunError(f"unknown scenario {scenario!r}; allowed: class, random")
    retain = np.setdiff1d(train, forget)
    if len(retain) == 0:
        raise SalunError("the retain set is empty: every training image would be forgotten")
    return Split(
        dataset=dataset,
        scenario=scenario,
        seed=seed,
        train=train.astype(np.int64),
        val=val.astype(np.int64),
        test=test.astype(np.int64),
        forget=forget.astype(np.int64),
        retain=retain.astype(np.int64),
        forget_class=fc,
        forget_class_name=classes[fc] if fc is not None else None,
    )
