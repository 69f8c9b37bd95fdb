"""docs/adding-a-method.md, followed literally: its code registers a toy method, which then
runs through the Python API on real data (digits) with and without a saliency mask."""

from __future__ import annotations

import copy
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import salun
from salun.core.errors import SalunError
from salun.core.registry import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def toy_module(monkeypatch):
    """Step 1-2: the method file of the doc, imported as a module of salun.methods (the
    registry is restored afterwards so that no other test sees the toy method)."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    source = next(b for b in _blocks() if "@METHODS.register(" in b)
    module = types.ModuleType("salun.methods.toy_ga")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    f, r = torch.nonzero(y == 3).squeeze(1)[:60], torch.nonzero(y != 3).squeeze(1)[:400]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.cat([x[f], x[r]]), torch.cat([y[f], y[r]])
    for _ in range(30):
        for idx in torch.randperm(len(xt)).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[f], y[f], x[r], y[r]


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def test_the_doc_method_registers_and_runs_through_the_api(toy_module, digits):
    assert "toy_ga" in salun.list_methods() and "toy_ga" in salun.list_methods("ddpm")
    assert toy_module.ToyGA.mask_policy == "optional"
    original, xf, yf, xr, yr = digits
    model = copy.deepcopy(original)
    # step 5 of the doc, as written, with the names it uses
    use = next(b for b in _blocks() if 'method="toy_ga"' in b)
    exec(compile(use, str(DOC), "exec"), {"model": model, "xf": xf, "yf": yf, "xr": xr, "yr": yr})
    assert _acc(model, xf, yf) < _acc(original, xf, yf) - 30  # it forgot
    moved = sum(
        int((p != q).sum()) for p, q in zip(model.parameters(), original.parameters(), strict=True)
    )
    total = sum(p.numel() for p in model.parameters())
    assert 0 < moved <= total // 2  # mask=True: only the salient half (mask_ratio 0.5) moved
    # hyperparameters are checked by type and by check()
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    with pytest.raises(SalunError, match="toy_ga.beta must be >= 0, got -1.0"):
        salun.unlearn(model, forget, retain, method="toy_ga", beta=-1.0)
    with pytest.raises(SalunError, match="toy_ga.beta must be a number"):
        salun.unlearn(model, forget, retain, method="toy_ga", beta="high")
    # the retain phase (beta > 0) runs too
    salun.unlearn(copy.deepcopy(original), forget, retain, method="toy_ga", beta=0.5, epochs=1)


def test_the_doc_names_the_mask_capabilities_the_api_reads(toy_module):
    from salun.methods import mask_policy

    assert mask_policy(toy_module.ToyGA) == "optional"
    assert mask_policy(METHODS.get("salun")) == "required"
    assert mask_policy(METHODS.get("retrain")) == "refused"
    text = DOC.read_text(encoding="utf-8")
    for word in ("required", "optional", "refused"):
        assert f'"{word}"' in text
