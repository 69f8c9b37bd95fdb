"""The Python API on the models and data people have (issue 11), on real data (digits).

A torchvision-style ResNet built in code, a model returning ``.logits``, a tuple-returning
model, a frozen backbone, dict items, a DataLoader with its own ``collate_fn``, a bf16 model,
Retrain with and without ``init_fn``, and no side effect on the caller's random state.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import salun
from salun.core.errors import SalunError

FORGET_CLASS = 3


@pytest.fixture(scope="module")
def digits():
    """Digits as (N, 1, 8, 8) floats in [0, 1]: D_f = class 3 (60 images), D_r 400 others."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    f = torch.nonzero(y == FORGET_CLASS).squeeze(1)[:60]
    r = torch.nonzero(y != FORGET_CLASS).squeeze(1)[:400]
    return x[f], y[f], x[r], y[r]


def _train(model: nn.Module, x, y, epochs: int = 30, lr: float = 0.01, logits=lambda o: o):
    """A plain training loop (the user's own): full-batch-ish Adam, seeded."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(logits(model(x[idx])).float(), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def _acc(model, x, y, logits=lambda o: o) -> float:
    model.eval()
    return 100.0 * float((logits(model(x)).argmax(1) == y).float().mean())


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# -- a torchvision-style ResNet (conv1/bn1/maxpool/layer1-4/avgpool/fc, BasicBlock) ----------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision.models.ResNet's layout (BasicBlock, one block per stage, narrow)."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)  # small inputs: 3x3/1
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()  # 8x8 digits: no stem pooling
        w = [width, 2 * width, 4 * width, 8 * width]
        self.layer1 = BasicBlock(w[0], w[0], 1)
        self.layer2 = BasicBlock(w[0], w[1], 2)
        self.layer3 = BasicBlock(w[1], w[2], 2)
        self.layer4 = BasicBlock(w[2], w[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture(scope="module")
def resnet_original(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(0)
    return _train(ResNet(), torch.cat([xf, xr]), torch.cat([yf, yr]), epochs=15)


def test_salun_on_a_torchvision_style_resnet(digits, resnet_original):
    xf, yf, xr, yr = digits
    before_f, before_r = _acc(resnet_original, xf, yf), _acc(resnet_original, xr, yr)
    assert before_f > 90 and before_r > 90  # the original knows the class
    model = copy.deepcopy(resnet_original)
    epochs_seen = []
    salun.unlearn(
        model,
        TensorDataset(xf, yf),
        TensorDataset(xr, yr),
        method="salun",
        epochs=3,
        lr=0.05,
        batch_size=32,
        callbacks=[epochs_seen.append],
    )
    after_f, after_r = _acc(model, xf, yf), _acc(model, xr, yr)
    assert after_f < before_f - 50, (before_f, after_f)
    assert after_r > before_r - 15, (before_r, after_r)
    # SalUn's own mask (top 50 %): about half of the weights are bit-identical to the original
    same = sum(
        int((p == q).sum())
        for p, q in zip(model.parameters(), resnet_original.parameters(), strict=True)
    )
    total = sum(p.numel() for p in model.parameters())
    assert 0.45 < same / total < 0.6, same / total
    assert [r["epoch"] for r in epochs_seen] == [1, 2, 3]


@dataclass
class Output:  # a Hugging Face-style output object
    logits: torch.Tensor
    hidden: torch.Tensor


class LogitsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, pixel_values):
        return Output(logits=self.net(pixel_values), hidden=pixel_values.flatten(1))


class TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        return self.net(x), x.flatten(1)


@pytest.mark.parametrize("kind", ["logits", "tuple", "output_fn"])
def test_models_returning_objects_tuples_or_anything_with_output_fn(digits, kind):
    xf, yf, xr, yr = digits
    torch.manual_seed(1)
    kw = {}
    if kind == "logits":
        model, get = LogitsModel(), (lambda o: o.logits)
    elif kind == "tuple":
        model, get = TupleModel(), (lambda o: o[0])
    else:  # an output the adapter does not know: a dict keyed "scores"

        class DictOut(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = _mlp()

            def forward(self, x):
                return {"scores": self.net(x)}

        model, get = DictOut(), (lambda o: o["scores"])
        kw["output_fn"] = get
    _train(model, torch.cat([xf, xr]), torch.cat([yf, yr]), logits=get)
    before = _acc(model, xf, yf, get)
    assert before > 90
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    salun.unlearn(model, forget, retain, method="salun", epochs=3, lr=0.01, batch_size=32, **kw)
    assert _acc(model, xf, yf, get) < before - 50
    scores = salun.evaluate(model, forget, retain, retain, **kw)
    assert scores["UA"] > 50  # unlearning accuracy = 100 - forget accuracy
    if kind == "output_fn":
        with pytest.raises(SalunError, match="cannot find logits in the model's output \\(dict\\)"):
            salun.unlearn(model, forget, retain, method="ft", epochs=1)


def test_frozen_backbone_stays_bit_identical_and_the_mask_covers_trainables_only(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(2)
    model = _mlp()
    _train(model, torch.cat([xf, xr]), torch.cat([yf, yr]))
    for p in model[1].parameters():  # a linear probe: the first layer is a frozen backbone
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    head = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    task = salun.api._task(model, {"forget": forget, "retain": retain}, None, None, False)
    mask = salun.compute_saliency_mask(model, forget, task, 0.5)
    assert set(mask.masks) == set(head) == {"3.weight", "3.bias"}
    salun.unlearn(model, forget, retain, method="salun", mask=mask, epochs=2, batch_size=32)
    salun.unlearn(model, forget, retain, method="ga", mask=True, epochs=1, batch_size=32)
    params = dict(model.named_parameters())
    for n, v in frozen.items():
        assert torch.equal(params[n], v) and not params[n].requires_grad, n
    changed = [n for n, v in head.items() if not torch.equal(params[n], v)]
    assert changed  # the head did move


class DictDigits(Dataset):
    def __init__(self, x, y, input_key="pixel_values", label_key="labels") -> None:
        self.x, self.y, self.keys = x, y, (input_key, label_key)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {self.keys[0]: self.x[i], self.keys[1]: int(self.y[i]), "id": f"img-{i}"}


def test_dict_item_datasets_default_and_custom_keys(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(3)
    model = _train(_mlp(), torch.cat([xf, xr]), torch.cat([yf, yr]))
    before = _acc(model, xf, yf)
    m1 = copy.deepcopy(model)
    salun.unlearn(m1, DictDigits(xf, yf), DictDigits(xr, yr), epochs=3, lr=0.01, batch_size=32)
    assert _acc(m1, xf, yf) < before - 50
    # custom keys, and the same result as tuples given the same seed
    m2, m3 = copy.deepcopy(model), copy.deepcopy(model)
    kw = {"method": "rl", "epochs": 1, "batch_size": 32, "seed": 5}
    salun.unlearn(
        m2,
        DictDigits(xf, yf, "img", "target"),
        DictDigits(xr, yr, "img", "target"),
        input_key="img",
        label_key="target",
        **kw,
    )
    salun.unlearn(m3, TensorDataset(xf, yf), TensorDataset(xr, yr), **kw)
    assert all(torch.equal(a, b) for a, b in zip(m2.parameters(), m3.parameters(), strict=True))
    with pytest.raises(SalunError, match="forget: dict item has no input key; looked for 'x'"):
        salun.unlearn(model, DictDigits(xf, yf), DictDigits(xr, yr), input_key="x")


def test_a_dataloader_is_used_as_it_is(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(4)
    model = _train(_mlp(), torch.cat([xf, xr]), torch.cat([yf, yr]))
    before = _acc(model, xf, yf)
    calls = {"forget": 0, "retain": 0}

    def collate(which):
        def fn(items):  # the user's own batch format: dicts of stacked tensors
            calls[which] += 1
            return {
                "image": torch.stack([x for x, _ in items]),
                "label": torch.tensor([int(y) for _, y in items]),
            }

        return fn

    # the forget loader draws in a fixed reversed order: its sampler must be kept
    order = list(range(len(xf)))[::-1]
    forget = DataLoader(
        TensorDataset(xf, yf), batch_size=20, sampler=order, collate_fn=collate("forget")
    )
    retain = DataLoader(
        TensorDataset(xr, yr), batch_size=50, shuffle=True, collate_fn=collate("retain")
    )
    salun.unlearn(model, forget, retain, method="salun", epochs=3, lr=0.01)
    assert _acc(model, xf, yf) < before - 50
    # the first-batch check + saliency (one pass over D_f: 3 batches) + 3 epochs x 3 batches
    assert calls["forget"] == 1 + 3 + 3 * 3, calls
    assert calls["retain"] == 1 + 3 * 8, calls
    with pytest.raises(SalunError, match="labels='fixed' keys random labels on sample positions"):
        salun.unlearn(model, forget, retain, method="rl", labels="fixed", epochs=1)


def test_unlearn_leaves_the_callers_random_state_alone_and_is_seeded(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    model = _mlp()
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    salun.unlearn(a, forget, retain, method="salun", epochs=1, batch_size=32, seed=11)
    salun.unlearn(b, forget, retain, method="retrain", epochs=1, batch_size=32, seed=11)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    c = copy.deepcopy(model)
    salun.unlearn(c, forget, retain, method="salun", epochs=1, batch_size=32, seed=11)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    assert next(a.parameters()).device.type == "cpu"  # stays on the model's own device


def test_a_bf16_model_unlearns_in_bf16(digits):
    xf, yf, xr, yr = digits
    torch.manual_seed(5)
    model = _train(_mlp(), torch.cat([xf, xr]), torch.cat([yf, yr])).to(torch.bfloat16)
    before = _acc(model, xf.bfloat16(), yf)
    w0 = [p.detach().clone() for p in model.parameters()]
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)  # fp32 inputs: cast
    salun.unlearn(model, forget, retain, method="salun", epochs=3, lr=0.01, batch_size=32)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), w0, strict=True))
    assert _acc(model, xf.bfloat16(), yf) < before - 50
    scores = salun.evaluate(model, forget, retain, retain)
    assert 0 <= scores["RA"] <= 100


class TinyViTHead(nn.Module):
    """A patch embedding with a learned position embedding (a bare nn.Parameter) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(16, 16)  # 4x4 patches of the 8x8 image
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        p = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(len(x), 4, 16)
        return self.head((self.patch(p) + self.pos_embed).relu().mean(1))


def test_retrain_refuses_parameters_it_cannot_reset_and_takes_init_fn(digits):
    xf, yf, xr, yr = digits
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    model = TinyViTHead()
    with torch.no_grad():
        model.pos_embed.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SalunError) as e:
        salun.unlearn(model, forget, retain, method="retrain", epochs=1)
    assert str(e.value) == (
        "Retrain cannot re-initialise pos_embed (no reset_parameters() on their modules); "
        "pass init_fn=... to salun.unlearn"
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    seen = []

    def init_fn(m):
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.reset_parameters()
        nn.init.trunc_normal_(m.pos_embed, std=0.02)
        seen.append((m, m.pos_embed.detach().clone()))

    salun.unlearn(
        model, forget, retain, method="retrain", epochs=10, batch_size=32, init_fn=init_fn
    )
    assert len(seen) == 1 and seen[0][0] is model
    assert float(seen[0][1].abs().max()) < 0.2  # pos_embed re-initialised (was 0.5)
    assert _acc(model, xr, yr) > 50  # Retrain learned the retain set from scratch
    with pytest.raises(SalunError, match="init_fn is used by method 'retrain' only, not 'ft'"):
        salun.unlearn(model, forget, retain, method="ft", init_fn=init_fn)


def test_epoch_losses_go_to_the_log_history_jsonl_and_callbacks(digits, tmp_path, caplog):
    from salun.run import run_log

    xf, yf, xr, yr = digits
    torch.manual_seed(6)
    model = _mlp()
    got = []
    with caplog.at_level(logging.INFO, logger="salun"), run_log(tmp_path):
        salun.unlearn(
            model,
            TensorDataset(xf, yf),
            TensorDataset(xr, yr),
            method="rl",
            epochs=2,
            batch_size=64,
            callbacks=[got.append],
        )
    lines = [json.loads(s) for s in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == got
    assert all(r["desc"] == "RL" and r["lr"] == 0.01 and r["seconds"] > 0 for r in lines)
    for r in lines:  # RL: a D_f phase (1 batch) then a D_r phase (7 batches); loss = their mean
        f, r_ = r["phase_losses"]
        assert f > 0 and r_ > 0 and abs(r["loss"] - (f * 1 + r_ * 7) / 8) < 1e-4
    assert "RL epoch 2/2: mean loss" in (tmp_path / "log.txt").read_text()
    with pytest.raises(SalunError, match="callbacks must be callables"):
        salun.unlearn(model, TensorDataset(xf, yf), TensorDataset(xr, yr), callbacks=[3])


def test_output_adapter_reads_the_common_output_shapes():
    from salun.tasks.batches import output_logits

    t = torch.randn(2, 3)
    assert output_logits(t) is t
    assert output_logits(SimpleNamespace(logits=t)) is t
    assert output_logits((t, None)) is t
    assert output_logits({"logits": t}) is t
    assert output_logits({"s": t}, lambda o: o["s"]) is t


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_models_keep_their_device_and_bf16_runs_on_cuda(digits):
    xf, yf, xr, yr = digits
    forget, retain = TensorDataset(xf, yf), TensorDataset(xr, yr)
    cpu = _mlp()
    salun.unlearn(cpu, forget, retain, method="rl", epochs=1)
    assert next(cpu.parameters()).device.type == "cpu"  # not moved to CUDA unasked
    gpu = _mlp().cuda().to(torch.bfloat16)
    state = torch.cuda.get_rng_state()
    salun.unlearn(gpu, forget, retain, method="salun", epochs=1, batch_size=32)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in gpu.parameters())
    assert 0 <= salun.evaluate(gpu, forget, retain, retain)["TA"] <= 100
    moved = _mlp()
    salun.unlearn(moved, forget, retain, method="rl", epochs=1, device="cuda")
    assert next(moved.parameters()).is_cuda
