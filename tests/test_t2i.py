"""Stable Diffusion (task text_to_image) on a tiny pipeline built from config in code: data
generation, the mask, SalUn/ESD/UCE/FMN steps, the masked-update contract on the conditional
UNet, diffusers folders in and out, and the CLI."""

import copy
import json

import pytest
import torch

from salun.cli import main
from salun.config import load_config
from salun.core.errors import SalunError
from salun.methods import UnlearnData, get_method, list_methods
from salun.methods.saliency import SaliencyMask
from salun.tasks.text_to_image.text_to_image_io import build_tokenizer, load_pipeline, save_pipeline
from salun.tasks.text_to_image.text_to_image_runs import prepare_t2i, sample_prompts, unlearn_t2i

pytestmark = pytest.mark.diffusion

FAST = {"epochs": 1, "batch_size": 4}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    cache = tmp_path_factory.mktemp("t2i-cache")
    cfg = load_config("smoke/sd", [f"cache_dir={cache}"])
    return prepare_t2i(cfg)


def _params(name, **extra):
    import dataclasses

    from salun.core.registry import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS.get(name))}
    return {k: v for k, v in {**FAST, **extra}.items() if k in fields}


def test_methods_for_text_to_image():
    names = set(list_methods("text_to_image"))
    assert {"salun", "rl", "ga", "ft", "l1_sparse", "neggrad_plus", "esd", "uce", "fmn"} <= names
    assert "retrain" not in names and "uce" not in list_methods("ddpm")


def test_forget_and_retain_sets_are_generated_and_cached(sd):
    t = sd.task
    assert len(sd.forget) == 8 and len(sd.retain) == 8
    assert tuple(sd.forget.latents.shape[1:]) == (4, 8, 8)
    assert set(sd.forget.labels.tolist()) == {t.prompt_id("a photo of a nude person")}
    assert set(sd.retain.labels.tolist()) == set(t.retain_ids) and len(t.retain_ids) == 2
    assert t.embeddings.shape[0] == len(t.prompts) + 1  # + the empty prompt
    again = prepare_t2i(sd.cfg, pipe=sd.pipe)  # second time from the latent cache
    assert torch.equal(again.forget.latents, sd.forget.latents)


def test_tokenizer_makes_each_caption_word_one_token():
    tok = build_tokenizer(["a", "photo", "of", "sneaker"], max_length=8)
    assert tok.tokenize("a photo of a sneaker") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "sneaker</w>",
    ]
    assert len(tok("a photo", padding="max_length", max_length=8).input_ids) == 8


def test_relabel_never_returns_the_forget_prompt(sd):
    t = copy.copy(sd.task)
    g = torch.Generator().manual_seed(0)
    rows = sd.forget.labels
    for mode in ("retain", "null", "next", "random"):
        t.relabel_mode = mode
        assert not bool((t.relabel(rows, g) == rows).any()), mode
    t.relabel_mode = "null"
    assert bool((t.relabel(rows, g) == t.null_label).all())


def test_mask_and_salun_esd_uce_steps_then_plain_diffusers_reloads(sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    unet = sd.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    model, info, mask = unlearn_t2i(sd, "salun", _params("salun", form="paper", lr=1e-3), True)
    assert mask is not None and abs(mask.fraction - 0.5) < 1e-3
    assert all(m.dtype == torch.bool for m in mask.masks.values())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and info["rte_seconds"] > 0
    for n, p in model.named_parameters():  # non-salient weights did not move
        assert torch.equal(p[~mask.masks[n]], before[n][~mask.masks[n]])
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())  # original intact

    esd, _, _ = unlearn_t2i(sd, "esd", _params("esd", train="xattn", lr=1e-3))
    moved = {n for n, p in esd.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".attn2." in n for n in moved)
    assert all(p.requires_grad for p in esd.parameters())  # restored after the run

    folder = save_pipeline(sd.pipe, tmp_path / "model", unet=model, mask=mask)
    assert sd.pipe.unet is unet
    plain = StableDiffusionPipeline.from_pretrained(folder)
    plain.set_progress_bar_config(disable=True)
    for n, p in plain.unet.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n])
    out = plain(
        "a photo of a nude person",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 16, 16, 1)
    assert SaliencyMask.load(folder / "mask.safetensors", plain.unet).selected == mask.selected
    again = load_pipeline(folder)  # salun's loader (safetensors only) reads it too
    images = sample_prompts(sd, again.unet, ["a photo of a dog"], 2)
    assert images.shape == (2, 1, 16, 16) and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_uce_edits_only_cross_attention_keys_and_values(sd):
    before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    model, _, _ = unlearn_t2i(sd, "uce", {})
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in moved)
    assert {n for n in before if ".attn2.to_k.weight" in n} <= moved
    # the erased prompt's keys now match the target's: W_new c ~ W c* on the forget prompt
    name = sorted(n for n in moved if n.endswith("to_k.weight"))[0]
    t = sd.task
    c = t.embeddings[t.prompt_id("a photo of a nude person")]
    w_old, w_new = before[name], dict(model.named_parameters())[name].detach()
    targets = [w_old @ t.embeddings[r].T for r in t.retain_ids]
    err_new = min(float((w_new @ c.T - tgt).norm()) for tgt in targets)
    err_old = min(float((w_old @ c.T - tgt).norm()) for tgt in targets)
    assert err_new < 0.5 * err_old


@pytest.mark.parametrize("name", [m for m in list_methods("text_to_image")])
def test_masked_update_is_bit_identical_on_the_conditional_unet(name, sd):
    model = copy.deepcopy(sd.unet)
    g = torch.Generator().manual_seed(1)
    mask = SaliencyMask(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = _params(name, optimizer="adam", lr=1e-3, weight_decay=0.01)
    sd.task.reseed(0)
    data = UnlearnData(forget=sd.forget, retain=sd.retain, seed=0)
    get_method(name, **params).unlearn(model, data, sd.task, mask=mask)
    moved = 0
    for n, p in model.named_parameters():
        keep = ~mask.masks[n]
        assert torch.equal(p.detach()[keep], before[n][keep]), f"{name}: {n} moved outside the mask"
        moved += int((p.detach()[~keep] != before[n][~keep]).sum())
    assert moved > 0, f"{name} changed nothing"


def test_iteration_cycles_through_both_sets(sd):
    """The reference reused its first batch every step; every sample must be visited."""
    task = copy.copy(sd.task)
    seen: dict[str, set] = {"forget": set(), "retain": set()}
    real_loss = type(task).loss

    def loss(self, model, batch, labels=None):
        rows = set(batch[1].tolist())
        part = (
            "forget"
            if rows <= set(sd.task.prompt_id(p) for p in ["a photo of a nude person"])
            else "retain"
        )
        seen[part].update(int(i) for i in batch[2])
        return real_loss(self, model, batch, labels)

    task.loss = loss.__get__(task)
    model = copy.deepcopy(sd.unet)
    data = UnlearnData(forget=sd.forget, retain=sd.retain, seed=0)
    get_method("salun", form="paper", epochs=1, batch_size=2, lr=1e-5).unlearn(
        model, data, task, mask=None
    )
    assert seen["forget"] == set(range(len(sd.forget)))
    assert seen["retain"] == set(range(len(sd.retain)))


def test_task_options_autocast_checkpointing_frozen_target(sd):
    task = copy.copy(sd.task)
    task.precision, task.gradient_checkpointing, task.target = "bf16", True, "frozen"
    task._frozen = None
    model = copy.deepcopy(sd.unet).train()
    batch = next(iter(task.loader(sd.forget, 4, False)))
    value = task.loss(model, batch, labels=task.relabel(batch[1], torch.Generator()))
    value.backward()
    assert torch.isfinite(value) and model.is_gradient_checkpointing
    assert task._frozen is not None and task._frozen[1] is not model
    assert any(p.grad is not None for p in model.parameters())


def test_adam8bit_without_bitsandbytes_is_one_clear_error(sd):
    pytest.importorskip("salun")  # always present; keeps the test's shape explicit
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    with pytest.raises(SalunError, match="adam8bit needs bitsandbytes"):
        unlearn_t2i(sd, "ft", _params("ft", optimizer="adam8bit"))


def test_loading_refuses_pickles_and_incomplete_folders(sd, tmp_path):
    folder = save_pipeline(sd.pipe, tmp_path / "p")
    for f in (folder / "unet").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(SalunError, match=r"unet/ has only pickle weights \(.bin\)"):
        load_pipeline(folder)
    with pytest.raises(SalunError, match="no model_index.json"):
        load_pipeline(tmp_path)
    (folder / "model_index.json").rename(tmp_path / "x.json")
    with pytest.raises(SalunError, match="no such folder|no model_index"):
        load_pipeline(tmp_path / "missing" / "deeper")


def test_config_checks_are_one_line():
    with pytest.raises(SalunError, match="text_to_image.scenario"):
        load_config("smoke/sd", ["text_to_image.scenario=style"])
    with pytest.raises(SalunError, match="text_to_image.forget_class"):
        load_config(
            "smoke/sd",
            [
                "text_to_image.scenario=class",
                "text_to_image.classes=[a, b]",
                "text_to_image.forget_class=c",
            ],
        )
    with pytest.raises(SalunError, match="method 'iu' does not support task 'text_to_image'"):
        load_config("smoke/sd", ["unlearn.method=iu", "unlearn.params={}"])
    for preset in ("sd-nudity", "sd-imagenette-class", "demo-sd"):
        assert load_config(preset).task == "text_to_image"


def test_cli_unlearn_and_mask(tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    rc = main(["unlearn", "smoke/sd", f"cache_dir={cache}", "--out", str(out), "--no-compare"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "salun" and (out / "model" / "model_index.json").is_file()
    assert (out / "mask.safetensors").is_file() and (out / "grid_salun.png").is_file()
    rc = main(["mask", "smoke/sd", f"cache_dir={cache}", "--out", str(tmp_path / "m")])
    assert rc == 0 and (tmp_path / "m" / "mask.safetensors").is_file()
    bad = tmp_path / "bad"
    rc = main(["unlearn", "smoke/sd", "text_to_image.pipeline=/nonexistent/sd", "--out", str(bad)])
    assert rc == 2 and not bad.exists()
    assert "no such folder" in capsys.readouterr().err


def test_nudenet_hook_runs_on_generated_images(sd, tmp_path):
    from salun.eval import nudity

    images = sample_prompts(sd, sd.unet, ["a photo of a nude person"], 2)
    result = nudity.nudenet_exposed(images, thresholds=(0.6, 0.45))
    assert isinstance(result, dict)


def test_pipeline_build_prints_no_torchvision_notice():
    """transformers' "requires torchvision ... falling back" notice is noise for salun's
    pipelines (no image processor is used); building one prints nothing on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from salun.tasks.text_to_image.text_to_image_io import tiny_pipeline\n"
        "tiny_pipeline(['a photo of the digit zero'], image_size=16, channels=1)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torchvision" not in r.stderr, r.stderr
