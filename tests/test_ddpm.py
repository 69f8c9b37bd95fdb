"""Class-conditional DDPM: the Task seam, the masked-update contract, CFG sampling, diffusers
folders, evaluation pieces and the CLI, on a tiny UNet trained on a digits subset."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from salun.cli import main
from salun.config import load_config
from salun.core.errors import SalunError
from salun.eval.fid import ClassifierFeatures, feature_extractor, frechet_distance
from salun.eval.generation import generation_metrics, sample, save_grid
from salun.methods import UnlearnData, get_method, list_methods
from salun.methods.saliency import SaliencyMask, compute_saliency_mask
from salun.run import prepare, reseed, train_model

pytestmark = pytest.mark.diffusion

DDPM_METHODS = [m for m in list_methods("ddpm") if m != "retrain"]
FAST = {"epochs": 1, "batch_size": 64}


@pytest.fixture(scope="module")
def ddpm(cache_dir):
    cfg = load_config("smoke/ddpm", [f"cache_dir={cache_dir}"])
    exp = prepare(cfg)
    model, info = train_model(exp, "original")
    return exp, model, info


def _data(exp, seed=0):
    return UnlearnData(forget=exp.forget, retain=exp.retain, seed=seed)


def _params(name, **extra):
    import dataclasses

    from salun.core.registry import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS.get(name))}
    return {k: v for k, v in {**FAST, **extra}.items() if k in fields}


def test_ddpm_methods_are_the_generic_ones_plus_esd():
    assert {"ft", "ga", "rl", "salun", "retrain", "esd"} <= set(list_methods("ddpm"))
    assert "esd" not in list_methods("classification")
    assert "iu" not in list_methods("ddpm")


def test_unsupported_method_for_the_task_is_one_clear_error():
    with pytest.raises(SalunError, match="method 'iu' does not support task 'ddpm'.*esd"):
        load_config("smoke/ddpm", ["unlearn.method=iu", "unlearn.params={}"])
    with pytest.raises(SalunError, match="method 'esd' does not support task 'classification'"):
        load_config("smoke/digits", ["unlearn.method=esd"])
    with pytest.raises(SalunError, match="data.scenario must be 'class'"):
        load_config("smoke/ddpm", ["data.scenario=random", "data.forget_ratio=0.1"])
    with pytest.raises(SalunError, match="diffusion.sampler.*ddim"):
        load_config("smoke/ddpm", ["diffusion.sampler=euler"])
    with pytest.raises(SalunError, match="eval.ulira and eval.epsilon attack classifiers"):
        load_config("smoke/ddpm", ["eval.epsilon=true"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", DDPM_METHODS)
def test_masked_update_is_bit_identical_on_a_unet(name, optimizer, ddpm):
    exp, original, _ = ddpm
    model = copy.deepcopy(original)
    g = torch.Generator().manual_seed(1)
    mask = SaliencyMask(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 1e-3 if optimizer == "adam" else 0.01
    params = _params(name, optimizer=optimizer, lr=lr, weight_decay=0.01, momentum=0.9)
    reseed(exp, 0)
    out = get_method(name, **params).unlearn(model, _data(exp), exp.task, mask=mask)
    moved = 0
    for n, p in out.named_parameters():
        m = mask.masks[n]
        assert torch.equal(p.detach()[~m], before[n][~m]), f"{name}/{optimizer}: {n} moved"
        moved += int((p.detach()[m] != before[n][m]).sum())
    assert moved > 0


@pytest.mark.parametrize("name", DDPM_METHODS)
def test_same_seed_same_weights(name, ddpm):
    exp, original, _ = ddpm
    runs = []
    for _ in range(2):
        reseed(exp, 5)
        runs.append(
            get_method(name, **_params(name)).unlearn(
                copy.deepcopy(original), _data(exp, 5), exp.task
            )
        )
    for (k, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_saliency_mask_uses_the_noise_mse_and_is_exact(ddpm):
    exp, original, _ = ddpm
    mask = compute_saliency_mask(original, exp.forget, exp.task, ratio=0.3)
    assert mask.meta["loss"] == "ddpm:forget_loss"
    assert mask.meta["forget_loss_mean"] > 0
    assert mask.selected == round(0.3 * mask.total)


def test_relabel_never_returns_the_true_class(ddpm):
    exp, _, _ = ddpm
    labels = torch.arange(10).repeat(20)
    g = torch.Generator().manual_seed(0)
    nxt = exp.task.relabel(labels, g)
    assert torch.equal(nxt, (labels + 1) % 10)
    task = copy.copy(exp.task)
    task.relabel_mode = "random"
    rnd = task.relabel(labels, g)
    assert not bool((rnd == labels).any())
    assert len(set(rnd[labels == 0].tolist())) > 3  # random other classes, not one fixed class


def test_relabelled_loss_is_zero_for_the_true_label_and_frozen_target_stays(ddpm):
    exp, original, _ = ddpm
    model = copy.deepcopy(original)
    batch = next(iter(exp.task.loader(exp.forget, 16, False)))
    same = exp.task.loss(model, batch, labels=batch[1])
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-12)
    other = exp.task.loss(model, batch, labels=(batch[1] + 1) % 10)
    assert float(other.detach()) > 0
    task = copy.copy(exp.task)
    task.target = "frozen"
    task._frozen = None
    task.loss(model, batch, labels=(batch[1] + 1) % 10)  # snapshot taken here
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    frozen = task._frozen[1]
    for (k, a), b in zip(frozen.state_dict().items(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_cfg_sampling_shape_range_and_determinism(ddpm):
    exp, model, _ = ddpm
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    for sampler in ("ddim", "ddpm"):
        kw = dict(guidance=2.0, steps=3, sampler=sampler, batch_size=4)
        a = sample(model, labels, exp.task.scheduler, 10, seed=7, **kw)
        b = sample(model, labels, exp.task.scheduler, 10, seed=7, **kw)
        c = sample(model, labels, exp.task.scheduler, 10, seed=8, **kw)
        assert a.shape == (6, 1, 16, 16)
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    # guidance changes the result; w = 0 is the purely conditional model
    w0 = sample(model, labels, exp.task.scheduler, 10, guidance=0.0, steps=3, seed=7)
    w2 = sample(model, labels, exp.task.scheduler, 10, guidance=2.0, steps=3, seed=7)
    assert not torch.equal(w0, w2)
    with pytest.raises(SalunError, match="sampler.*ddim"):
        sample(model, labels, exp.task.scheduler, 10, sampler="euler")


def test_saved_folder_loads_with_plain_diffusers(ddpm, tmp_path):
    from diffusers import UNet2DModel

    from salun.tasks.ddpm.ddpm_folders import load_ddpm, save_ddpm

    exp, model, _ = ddpm
    folder = save_ddpm(model, exp, tmp_path / "model")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((folder / "unet").glob("*.bin"))
    plain = UNet2DModel.from_pretrained(folder / "unet")
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 20, 40])
    c = torch.tensor([0, 4, 10])  # 10 = the null label
    with torch.no_grad():
        assert torch.equal(plain(x, t, class_labels=c).sample, model(x, t, class_labels=c).sample)
    unet, scheduler, meta = load_ddpm(folder)
    assert meta["null_label"] == 10 and meta["num_classes"] == 10
    assert scheduler.config.num_train_timesteps == 50
    save_ddpm(model, exp, folder)  # overwriting keeps a complete folder
    assert (folder / "unet" / "config.json").is_file()
    with pytest.raises(SalunError, match="not a salun DDPM folder"):
        load_ddpm(tmp_path)


def test_frechet_distance_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=0.25)  # |mu|^2 = 1 + 4, same cov
    c = rng.normal(size=(4000, 3)) * 2.0  # cov 4I vs I: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, c) == pytest.approx(3.0, abs=0.3)
    with pytest.raises(SalunError, match="at least 2"):
        frechet_distance(a[:1], b)


class ValueJudge(nn.Module):
    """A real classifier for constant images: class = round(10 * mean pixel)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 10)

    def forward(self, x):
        k = (x.mean(dim=(1, 2, 3)) * 10).round().clamp(0, 9).long()
        self.fc(x.mean(dim=(1, 2, 3))[:, None])  # penultimate features for FID
        return torch.nn.functional.one_hot(k, 10).float()


def test_generation_metrics_count_ua_and_per_class_accuracy():
    labels = torch.arange(10).repeat_interleave(4)
    values = labels.float() / 10
    values[labels == 3] = 0.5  # requested 3, looks like 5: forgotten
    values[(labels == 7).nonzero()[:1]] = 0.2  # one of four 7s is wrong
    images = values[:, None, None, None].expand(-1, 1, 4, 4).clone()
    m = generation_metrics(images, labels, ValueJudge(), forget_class=3, num_classes=10)
    assert m["UA"] == 100.0
    assert m["per_class_acc"]["7"] == 75.0
    assert m["other_acc"] == pytest.approx((8 * 100 + 75) / 9)


def test_user_supplied_feature_networks_and_grid(tmp_path):
    from salun.eval.fid import save_feature_network
    from salun.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn", num_classes=5, in_channels=3, image_size=8, width=4).eval()
    arch = dict(model="cnn", num_classes=5, in_channels=3, image_size=8, width=4)
    save_feature_network(net, tmp_path / "feat.safetensors", **arch)
    x = torch.rand(70, 1, 16, 16)  # 70 > one chunk of 64: the last chunk has another size
    f = feature_extractor(str(tmp_path / "feat.safetensors"), None)
    assert f.name == "cnn:feat.safetensors"
    feats = f(x)
    assert feats.shape == (70, 16)  # grey -> 3 channels, resized to the recorded 8 x 8
    want = ClassifierFeatures(net)(
        torch.nn.functional.interpolate(x.repeat(1, 3, 1, 1), size=(8, 8), mode="bilinear")
    )
    assert np.allclose(feats, want, atol=1e-6)
    for bad in ("feat.pt2", "feat.pt"):
        with pytest.raises(SalunError, match="executable formats .* are refused"):
            feature_extractor(str(tmp_path / bad), None)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SalunError, match="not a readable safetensors file"):
        feature_extractor(str(tmp_path / "junk.safetensors"), None)
    with pytest.raises(SalunError, match="does not exist"):
        feature_extractor(str(tmp_path / "missing.safetensors"), None)
    from PIL import Image

    save_grid(torch.rand(20, 1, 16, 16), torch.arange(4).repeat_interleave(5), tmp_path / "g.png")
    img = Image.open(tmp_path / "g.png")
    # 10 per row (padded), one row per class, 4x upscaled, 2 px apart, a label column
    w, h = img.size
    assert h == 4 + 4 * (64 + 2) + 2 and w > 10 * (64 + 2)
    titled = tmp_path / "t.png"
    save_grid(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), titled, per_row=2, title="SalUn")
    a = torch.from_numpy(np.array(Image.open(titled).convert("L")))
    assert (a[:18] < 128).any()  # the title is drawn above the grid
    assert (a[18:, :20] < 128).any()  # the row labels on the left


def test_cli_train_unlearn_sample_eval(tmp_path, cache_dir, capsys):
    common = ["smoke/ddpm", f"cache_dir={cache_dir}"]
    assert main(["train", "--task", "ddpm", *common, "--out", str(tmp_path / "orig")]) == 0
    assert (tmp_path / "orig" / "model" / "unet" / "config.json").is_file()
    assert (tmp_path / "orig" / "grid_original.png").is_file()
    rc = main(
        [
            "unlearn",
            "--task",
            "ddpm",
            *common,
            "unlearn.method=esd",
            "unlearn.params={epochs: 1}",
            "--model",
            str(tmp_path / "orig" / "model"),
            "--out",
            str(tmp_path / "esd"),
        ]
    )
    assert rc == 0
    r = json.loads((tmp_path / "esd" / "metrics.json").read_text())
    assert r["task"] == "ddpm" and r["method"] == "esd"
    for key in ("UA", "other_acc", "FID", "per_class_acc", "judge", "definitions"):
        assert key in r["metrics"]
    assert r["metrics"]["fid_features"] == "classifier-penultimate"
    assert {"test_acc", "test_size", "forget_class_test_acc"} <= set(r["metrics"]["judge"])
    assert "metrics" in r["original"]
    assert (tmp_path / "esd" / "grid_original.png").is_file()
    assert (tmp_path / "esd" / "grid_esd.png").is_file()
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "esd" / "model"),
                "--out",
                str(out),
                "--classes",
                "0,3",
                "--n",
                "2",
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    from salun.core.io import load_tensors

    t = load_tensors(out / "samples.safetensors")
    assert (out / "grid_esd.png").is_file()
    assert t["images"].shape == (4, 1, 16, 16) and t["labels"].tolist() == [0, 0, 3, 3]
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--task",
                "ddpm",
                *common,
                "--model",
                str(tmp_path / "esd" / "model"),
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"UA", "other_acc", "FID"}
    # bad input: one line, exit 2, nothing left behind
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "esd" / "model"),
                "--out",
                str(tmp_path / "bad"),
                "--classes",
                "12",
            ]
        )
        == 2
    )
    assert "class 12 out of range; allowed: 0..9" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert (
        main(
            [
                "unlearn",
                "--task",
                "ddpm",
                *common,
                "unlearn.method=scrub",
                "--out",
                str(tmp_path / "bad2"),
            ]
        )
        == 2
    )
    assert "does not support task 'ddpm'" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()
