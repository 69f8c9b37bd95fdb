"""The Python API refuses what a fuzzer fed it (issue 20): one line naming the bad value and what
is allowed, raised before any work (the model is untouched), and never NaN weights.

Real models and data (scikit-learn digits, tiny MLPs), the real ``salun.unlearn``,
``salun.evaluate`` and ``salun.compute_saliency_mask``; the cache case runs the real CLI.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

import salun
from salun.cli import main
from salun.core.errors import SalunError


@pytest.fixture(scope="module")
def digits():
    """Digits as (N, 1, 8, 8) floats in [0, 1]: forget 60, retain 340, test 100 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:500], y[:500]


def _sets(digits):
    x, y = digits
    return (
        TensorDataset(x[:60], y[:60]),
        TensorDataset(x[60:400], y[60:400]),
        TensorDataset(x[400:], y[400:]),
    )


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)
    )


class _NaNOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


class _Lying(Dataset):
    """``__len__`` says 100; items past ``real`` raise IndexError (``none``: are None)."""

    def __init__(self, x, y, real: int, none: bool = False) -> None:
        self.x, self.y, self.real, self.none = x, y, real, none

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i):
        if i >= self.real:
            if self.none:
                return None
            raise IndexError(f"index {i} out of range")
        return self.x[i], int(self.y[i])


class _Stream(IterableDataset):
    def __init__(self, ds) -> None:
        self.ds = ds

    def __iter__(self):
        return iter(self.ds)

    def __len__(self) -> int:
        return len(self.ds)


def _meta_mlp() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _frozen() -> nn.Module:
    model = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


BN = "the model's BatchNorm layer '2' cannot train on a batch of one item"
LEN = "__len__ must match the items __getitem__ returns"
SEED = "seed must be an integer in 0..4294967295"


def _case(model=_mlp, forget=None, retain=None, **kw):
    """A case: ``(digits) -> (model, forget, retain, keyword arguments)``; ``forget`` and
    ``retain`` are ``(x, y, F, R) -> data`` (default: the digits sets)."""

    def build(digits):
        x, y = digits
        f, r, _ = _sets(digits)
        args = (x, y, f, r)
        return (
            model(),
            f if forget is None else forget(*args),
            r if retain is None else retain(*args),
            {"method": "ft", "epochs": 1, **kw},
        )

    return build


def _nan_at_5(x, y):
    x = x.clone()
    x[5, 0, 3, 3] = float("nan")
    return TensorDataset(x, y)


# (case id, the case, the message)
UNLEARN_CASES = [
    (
        "empty-forget",
        _case(forget=lambda x, y, f, r: TensorDataset(x[:0], y[:0])),
        "the forget set is empty: there is nothing to unlearn",
    ),
    (
        "meta-device",
        _case(model=_meta_mlp),
        "the model's '1.weight' is on the meta device (no values): load its weights first "
        "(e.g. model.to_empty(device='cpu') and load_state_dict)",
    ),
    (
        "all-frozen",
        _case(model=_frozen),
        "all 4 parameters of the model are frozen (requires_grad=False); unfreeze the ones to "
        "unlearn (requires_grad_(True))",
    ),
    (
        "no-parameters",
        _case(model=lambda: nn.Sequential(nn.Flatten())),
        "the model has no parameters: there is nothing to unlearn",
    ),
    (
        "lying-len-forget",
        _case(forget=lambda x, y, f, r: _Lying(x, y, 30)),
        "forget item 30 cannot be read although len(forget) = 100 (IndexError: index 30 out "
        f"of range); {LEN}",
    ),
    (
        "lying-len-in-a-loader",
        _case(forget=lambda x, y, f, r: DataLoader(_Lying(x, y, 30), batch_size=8)),
        "forget item 99 cannot be read although len(forget) = 100 (IndexError: index 99 out "
        f"of range); {LEN}",
    ),
    (
        "lying-len-retain-none",
        _case(retain=lambda x, y, f, r: _Lying(x[60:], y[60:], 30, none=True)),
        f"retain item 30 is None although len(retain) = 100; {LEN}",
    ),
    ("seed-2**64", _case(seed=2**64), f"{SEED}, got {2**64}"),
    ("seed-float", _case(seed=1.5), "seed must be an integer, got 1.5"),
    ("seed-bool", _case(seed=True), "seed must be an integer, got True"),
    ("seed-negative", _case(seed=-1), f"{SEED}, got -1"),
    (
        "batch-size-0",
        _case(batch_size=0),
        "epochs must be >= 0, lr > 0, batch_size >= 1 (got epochs=1, lr=0.01, batch_size=0)",
    ),
    (
        "batch-size-negative",
        _case(batch_size=-3),
        "epochs must be >= 0, lr > 0, batch_size >= 1 (got epochs=1, lr=0.01, batch_size=-3)",
    ),
    ("batch-size-bool", _case(batch_size=True), "ft.batch_size must be an integer, got True"),
    ("batch-size-float", _case(batch_size=1.5), "ft.batch_size must be an integer, got 1.5"),
    (
        "label-negative",
        _case(forget=lambda x, y, f, r: TensorDataset(x[:60], y[:60] - 1)),
        "forget label -1 is out of range for a model with 10 outputs (allowed 0..9)",
    ),
    (
        "label-too-large",
        _case(retain=lambda x, y, f, r: TensorDataset(x[60:400], torch.full((340,), 10))),
        "retain label 10 is out of range for a model with 10 outputs (allowed 0..9)",
    ),
    (
        "label-too-large-in-a-loader",
        _case(forget=lambda x, y, f, r: DataLoader(TensorDataset(x[:60], y[:60] + 10), 8)),
        "forget label 10 is out of range for a model with 10 outputs (allowed 0..9)",
    ),
    (
        "nan-outputs",
        _case(model=_NaNOut),
        "the model's outputs are not finite (NaN or inf); refusing to unlearn it "
        "(diverged training? lower the learning rate)",
    ),
    (
        "nan-retain-input",
        _case(retain=lambda x, y, f, r: _nan_at_5(x[60:400], y[60:400])),
        "retain input 5 is not finite (NaN or inf); clean the data first",
    ),
    (
        "generator",
        _case(forget=lambda x, y, f, r: (f[i] for i in range(len(f)))),
        "forget must be a map-style Dataset (with __len__ and __getitem__) or a DataLoader over "
        "one, got generator",
    ),
    (
        "loader-over-an-iterable-dataset",
        _case(retain=lambda x, y, f, r: DataLoader(_Stream(r), batch_size=8)),
        "retain must be a map-style Dataset (with __len__ and __getitem__) or a DataLoader over "
        "one, got DataLoader over an IterableDataset",
    ),
    (
        "same-dataset",
        _case(retain=lambda x, y, f, r: f),
        "forget and retain are the same TensorDataset object; they must be disjoint (retain: the "
        "data to keep)",
    ),
    (
        "same-dataset-in-two-loaders",
        _case(
            forget=lambda x, y, f, r: DataLoader(r, batch_size=16),
            retain=lambda x, y, f, r: DataLoader(r, batch_size=32),
        ),
        "forget and retain are the same TensorDataset object; they must be disjoint (retain: the "
        "data to keep)",
    ),
    (
        "subsets-sharing-indices",
        _case(
            forget=lambda x, y, f, r: Subset(r, range(10, 60)),
            retain=lambda x, y, f, r: Subset(r, [*range(50, 340)]),
        ),
        "forget and retain share 10 items of one dataset (e.g. index 50); they must be disjoint",
    ),
    (
        "views-sharing-rows",
        _case(retain=lambda x, y, f, r: TensorDataset(x[59:400], y[59:400])),
        "forget and retain inputs are views of one tensor sharing rows; they must be disjoint",
    ),
    (
        "batchnorm-batch-size-1",
        _case(model=_bn_mlp, batch_size=1),
        f"batch_size=1: {BN}; use a batch size >= 2",
    ),
    (
        "batchnorm-one-item",
        _case(model=_bn_mlp, forget=lambda x, y, f, r: TensorDataset(x[:1], y[:1]), method="ga"),
        f"the forget set has 1 item: {BN}; give it at least 2",
    ),
    (
        "batchnorm-loader-ending-in-one-item",
        _case(
            model=_bn_mlp,
            retain=lambda x, y, f, r: DataLoader(TensorDataset(x[60:401], y[60:401]), 20),
        ),
        f"the retain DataLoader ends in a batch of one item (341 items, batch_size=20): {BN}; "
        "pass drop_last=True or another batch_size",
    ),
]


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text and text.strip() == text
    return text


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not v.is_meta}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "case, message", [c[1:] for c in UNLEARN_CASES], ids=[c[0] for c in UNLEARN_CASES]
)
def test_unlearn_refuses_before_any_work(case, message, digits):
    model, forget, retain, kw = case(digits)
    before = _snapshot(model)
    with pytest.raises(SalunError) as e:
        salun.unlearn(model, forget, retain, **kw)
    assert _one_line(e) == message
    assert _unchanged(model, before)


EVALUATE_CASES = [
    *[
        (
            f"empty-{part}",
            {part: "empty"},
            f"the {part} set is empty; evaluate needs at least one item in each of forget, "
            "retain and test",
        )
        for part in ("forget", "retain", "test")
    ],
    (
        "meta-device",
        {"model": _meta_mlp},
        "the model's '1.weight' is on the meta device (no values): load its weights first "
        "(e.g. model.to_empty(device='cpu') and load_state_dict)",
    ),
    (
        "lying-len-test",
        {"test": "lying"},
        "test item 30 cannot be read although len(test) = 100 (IndexError: index 30 out of "
        f"range); {LEN}",
    ),
    ("mia-seed-2**64", {"mia_seed": 2**64}, f"mia_{SEED}, got {2**64}"),
    ("mia-seed-float", {"mia_seed": 1.5}, "mia_seed must be an integer, got 1.5"),
    ("batch-size-0", {"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ("batch-size-negative", {"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
    ("batch-size-bool", {"batch_size": True}, "batch_size must be an integer, got True"),
    ("batch-size-float", {"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    (
        "generator",
        {"test": "generator"},
        "test must be a map-style Dataset (with __len__ and __getitem__) or a DataLoader over "
        "one, got generator",
    ),
    (
        "label-negative",
        {"test": "label-1"},
        "test label -1 is out of range for a model with 10 outputs (allowed 0..9)",
    ),
]


@pytest.mark.parametrize(
    "change, message", [c[1:] for c in EVALUATE_CASES], ids=[c[0] for c in EVALUATE_CASES]
)
def test_evaluate_refuses_before_any_work(change, message, digits):
    x, y = digits
    sets = dict(zip(("forget", "retain", "test"), _sets(digits), strict=True))
    change = dict(change)
    model = change.pop("model", _mlp)()
    for part in ("forget", "retain", "test"):
        kind = change.pop(part, None)
        if kind == "empty":
            sets[part] = TensorDataset(x[:0], y[:0])
        elif kind == "lying":
            sets[part] = _Lying(x, y, 30)
        elif kind == "generator":
            sets[part] = (sets[part][i] for i in range(10))
        elif kind == "label-1":
            sets[part] = TensorDataset(x[400:], y[400:] - 1)
    with pytest.raises(SalunError) as e:
        salun.evaluate(model, **sets, **change)
    assert _one_line(e) == message


def test_compute_saliency_mask_task_names(digits):
    forget, _, _ = _sets(digits)
    with pytest.raises(SalunError) as e:
        salun.compute_saliency_mask(_mlp(), forget, "foo")
    assert _one_line(e) == (
        "unknown task 'foo'; allowed: classification or a task object (with forget_loss and loader)"
    )
    from salun.methods.saliency import compute_saliency_mask

    with pytest.raises(SalunError) as e:
        compute_saliency_mask(_mlp(), forget, "foo")
    assert _one_line(e) == (
        "task must be a task object (with forget_loss and loader), got 'foo'; "
        "salun.compute_saliency_mask also takes task='classification'"
    )
    with pytest.raises(SalunError) as e:
        salun.compute_saliency_mask(_mlp(), forget, "classification", batch_size=0)
    assert _one_line(e) == "batch_size must be an integer >= 1, got 0"
    mask = salun.compute_saliency_mask(_mlp(), forget, "classification", 0.25)
    assert mask.selected == round(0.25 * mask.total)  # the name builds the API's task


def test_batchnorm_drops_a_last_training_batch_of_one_item(digits, caplog):
    """Decision: salun's own (shuffled, training) loaders drop a last batch of one item when a
    BatchNorm layer cannot train on it (logged); batch size 1 and user loaders are refused."""
    x, y = digits
    forget, retain = TensorDataset(x[:41], y[:41]), TensorDataset(x[60:401], y[60:401])
    model = _bn_mlp()
    with caplog.at_level(logging.INFO, "salun"):
        salun.unlearn(model, forget, retain, method="rl", epochs=1, batch_size=20)
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    dropped = [r.getMessage() for r in caplog.records if "dropping the last batch" in r.message]
    assert dropped and "(341 items, batch size 20)" in " ".join(dropped)
    # a BatchNorm2d on 8x8 maps trains on one image: nothing is dropped or refused there
    caplog.clear()
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(256, 10)
    )
    with caplog.at_level(logging.INFO, "salun"):
        salun.unlearn(conv, forget, Subset(retain, range(40)), method="ft", epochs=1, batch_size=1)
    assert not [r for r in caplog.records if "dropping" in r.message]


DIVERGING = [
    (
        "ga",
        {"lr": 1e30, "epochs": 2},
        "GA: the loss became non-finite (NaN or inf) in epoch 2/2 at lr=1e+30; try a smaller lr "
        "(or look for NaN in the data)",
    ),
    (
        "salun",
        {"lr": 1e30, "epochs": 2},
        "SalUn: the loss became non-finite (NaN or inf) in epoch 1/2 at lr=1e+30; try a smaller "
        "lr (or look for NaN in the data)",
    ),
    (
        "fisher",
        {"alpha": 1e38},
        "method 'fisher' made the model's weights non-finite (NaN or inf) in '1.weight'; try "
        "gentler hyperparameters than alpha=1e+38 (the model was changed in place: reload it)",
    ),
]


@pytest.mark.parametrize("method, params, message", DIVERGING, ids=[d[0] for d in DIVERGING])
def test_unlearn_never_returns_non_finite_weights(method, params, message, digits):
    forget, retain, _ = _sets(digits)
    with pytest.raises(SalunError) as e:
        salun.unlearn(_mlp(), forget, retain, method=method, **params)
    assert _one_line(e) == message


# -- a cache entry replaced by another valid model: refused before the run folder is written --
SMOKE = ["smoke/digits-random", "train.epochs=1", "threads=1", "--no-progress"]


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-entry")
    assert main(["train", *SMOKE, f"cache_dir={root / 'cache'}", "--out", str(root / "a")]) == 0
    (entry,) = (root / "cache").glob("original-*.safetensors")
    return entry


@pytest.mark.parametrize("how", ["no-metadata", "other-weights", "other-entry"])
def test_replaced_cache_entry_is_refused_before_the_run_folder(
    how, trained_cache, tmp_path, capsys
):
    from salun.core.io import load_tensors, read_metadata, save_tensors

    cache = tmp_path / "cache"
    shutil.copytree(trained_cache.parent, cache)
    entry = cache / trained_cache.name
    state = load_tensors(entry)
    meta = read_metadata(entry)
    other = {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}
    if how == "no-metadata":
        save_tensors(entry, other)
        reason = "its metadata does not name this entry"
    elif how == "other-weights":
        save_tensors(entry, other, meta)
        reason = "its weights are not the ones it was written with (sha256 differs)"
    else:
        save_tensors(entry, state, {**meta, "cache_entry": "original-0123.safetensors"})
        reason = "it was written as 'original-0123.safetensors'"
    capsys.readouterr()
    out = tmp_path / "b"
    assert main(["train", *SMOKE, f"cache_dir={cache}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"salun: error: cache entry {str(entry)!r} was not written by salun for this model "
        f"({reason}); delete it or pass --retrain to train it again"
    )
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["cache"]
