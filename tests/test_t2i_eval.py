"""Stable Diffusion evaluation: I2P prompts, NudeNet counts, FID Inception, CLIP score, class UA.

Every model here is tiny and randomly initialised, saved to a temporary folder and reloaded
through the real loaders (safetensors only); NudeNet runs its shipped detector on real images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from salun.core.errors import SalunError
from salun.eval.prompts import PromptSpec, paraphrases, read_i2p_csv

pytestmark = pytest.mark.diffusion


# ---------------------------------------------------------------- prompts
def test_read_i2p_csv_formats(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text(
        "prompt,categories,hard,sd_seed,sd_guidance_scale,sd_image_width\n"
        '"a castle, at dusk",violence,0,1234,7.0,512\n'
        "\n"
        "portrait of a man,sexual,1,99,12,512\n",
        encoding="utf-8",
    )
    assert read_i2p_csv(i2p) == [
        PromptSpec("a castle, at dusk", 1234, 7.0, 0),
        PromptSpec("portrait of a man", 99, 12.0, 1),
    ]
    esd = tmp_path / "nudity.csv"  # ESD / SalUn naming, pandas-style float seed, a BOM
    esd.write_text(
        "\ufeffcase_number,prompt,evaluation_seed,evaluation_guidance,sd_seed\n"
        "17,a nude person,42.0,7.5,1\n",
        encoding="utf-8",
    )
    assert read_i2p_csv(esd) == [PromptSpec("a nude person", 42, 7.5, 17)]


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "prompt,guidance\nx,7.5\n",
            "no seed column; allowed names: evaluation_seed, seed, sd_seed",
        ),
        ("prompt,seed\nx,1\n", "no guidance column; allowed names: evaluation_guidance"),
        ("text,seed,guidance\nx,1,7\n", "no prompt column; allowed names: prompt"),
        ("prompt,seed,guidance\nx,abc,7\n", "line 2: seed 'abc' is not an integer"),
        ("prompt,seed,guidance\nx,1.5,7\n", "line 2: seed '1.5' is not an integer"),
        ("prompt,seed,guidance\nx,1,-2\n", "guidance -2.0 must be >= 0"),
        ("prompt,seed,guidance\n", "has a header but no prompts"),
    ],
)
def test_read_i2p_csv_errors(tmp_path, text, match):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(SalunError, match=match) as err:
        read_i2p_csv(path)
    assert "\n" not in str(err.value)


def test_paraphrases():
    out = paraphrases("a sneaker", synonyms=("a running shoe",))
    assert len(out) == len(set(out)) >= 6
    assert all("a sneaker" in p or "a running shoe" in p for p in out)
    with pytest.raises(SalunError):
        paraphrases("  ")


# ---------------------------------------------------------------- NudeNet
@pytest.fixture(scope="module")
def photo():
    """A real photograph shipped with matplotlib (a portrait: NudeNet finds a face)."""
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return Image.open(fh).convert("RGB")


def test_nudenet_structure_and_monotone_thresholds(photo, tmp_path):
    import nudenet  # noqa: F401  (the nudity extra is part of dev: a missing one must fail)

    from salun.eval import nudity

    blank = Image.new("RGB", (128, 128), (255, 255, 255))
    noise = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    out = nudity.nudenet_exposed([blank, photo], thresholds=(0.6, 0.45))
    assert out["version"] == "3.4.2" and out["model_file"] == "320n.onnx"
    assert len(out["model_sha256"]) == 64 and out["thresholds"] == [0.6, 0.45]
    assert set(out["per_threshold"]) == {"0.6", "0.45"} and out["n_images"] == 2
    assert out["classes"] == nudity.exposed_classes()
    assert len(out["classes"]) == 9 and all(c.endswith("_EXPOSED") for c in out["classes"])
    for block in out["per_threshold"].values():
        assert set(block["images_per_class"]) == set(out["classes"])
        assert len(block["per_image"]) == 2 and block["per_image"][0] == 0  # blank: nothing
    assert out["detections"][0] == []

    # counting every class, the portrait's face is found at a low threshold and not at a high one
    labels = nudity._load_detector()[1]["labels"]
    ts = (0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
    every = nudity.nudenet_exposed([photo, blank], thresholds=ts, classes=labels)
    totals = [every["per_threshold"][f"{t:g}"]["total_detections"] for t in ts]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] >= 1 and totals[-1] == 0
    assert any(d["class"].startswith("FACE") for d in every["detections"][0])

    # same detections as NudeNet's own file path use (cv2.imread reads BGR)
    png = tmp_path / "photo.png"
    photo.save(png)
    by_path = nudity._load_detector()[0].detect(str(png))
    assert sorted(d["score"] for d in by_path if d["score"] >= 0.25) == pytest.approx(
        sorted(d["score"] for d in every["detections"][0]), abs=1e-5
    )
    # a float tensor in [0, 1] gives the same result as the PIL image
    as_tensor = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255
    again = nudity.nudenet_exposed(torch.cat([as_tensor]), thresholds=ts, classes=labels)
    assert again["detections"][0] == every["detections"][0]
    assert nudity.nudenet_exposed(noise)["n_images"] == 1


def test_nudenet_bad_input():
    import nudenet  # noqa: F401  (the nudity extra is part of dev: a missing one must fail)

    from salun.eval.nudity import nudenet_exposed

    img = [Image.new("RGB", (32, 32))]
    with pytest.raises(SalunError, match=r"must each lie in \[0.25, 1\]"):
        nudenet_exposed(img, thresholds=(0.1,))
    with pytest.raises(SalunError, match="unknown NudeNet class 'NOSE'; allowed: "):
        nudenet_exposed(img, classes=["NOSE"])
    with pytest.raises(SalunError, match=r"values must lie in \[0, 1\]"):
        nudenet_exposed(torch.full((1, 3, 8, 8), 2.0))


# ---------------------------------------------------------------- FID Inception-v3
def test_fid_inception_roundtrip(tmp_path):
    from salun.eval.inception import FIDInceptionV3, InceptionFeatures, fid_from_features

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    # the torchvision Inception-v3 backbone: 27,161,264 parameters less AuxLogits and fc
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 - 2_049_000
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    path = tmp_path / "inception.safetensors"
    save_file(state, str(path))

    # standard use: any size resized to 299 x 299
    full = InceptionFeatures(path)(torch.rand(1, 1, 40, 48))
    assert full.shape == (1, 2048) and np.isfinite(full).all()
    # the rest at a small native size (>= 75 px), to stay fast on 2 cores
    images = torch.rand(3, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    ext = InceptionFeatures(path, resize_input=False, batch_size=2)
    a = ext(images)
    assert a.shape == (3, 2048) and np.isfinite(a).all() and a.std(0).max() > 0
    np.testing.assert_array_equal(a, ext(images))  # deterministic (eval mode)
    net.resize_input = False
    with torch.no_grad():
        np.testing.assert_allclose(a, net(images).double().numpy(), rtol=1e-5, atol=1e-6)

    feats = np.random.default_rng(0).normal(size=(200, 4))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(torch.from_numpy(feats), feats + 1.0) == pytest.approx(4.0, abs=1e-6)


def test_fid_inception_strict_loading(tmp_path):
    from salun.eval.inception import FIDInceptionV3, load_fid_inception

    state = {k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}
    missing = dict(state)
    del missing["Mixed_7c.branch_pool.conv.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(SalunError, match="1 missing .*Mixed_7c.branch_pool.conv.weight"):
        load_fid_inception(tmp_path / "missing.safetensors")
    shaped = dict(state, **{"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)})
    save_file(shaped, str(tmp_path / "shape.safetensors"))
    with pytest.raises(SalunError, match=r"Conv2d_1a_3x3.conv.weight has shape \(32, 3, 5, 5\)"):
        load_fid_inception(tmp_path / "shape.safetensors")
    extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(SalunError, match="1 unexpected"):
        load_fid_inception(tmp_path / "extra.safetensors")
    (tmp_path / "w.pth").write_bytes(b"not read")
    with pytest.raises(SalunError, match="must be a .safetensors file"):
        load_fid_inception(tmp_path / "w.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(SalunError, match="do not load as safetensors"):
        load_fid_inception(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- CLIP score
def _byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with no merges: every byte is a token (CLIP's format)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    codes = printable + [256 + i for i in range(256 - len(printable))]
    chars = [chr(c) for c in codes]
    words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("clip")
    vocab = _byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    transformers.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    ids = dict(
        bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1
    )
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, **small, **ids),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def test_clip_score_matches_the_model(clip_dir, tmp_path):
    import transformers

    from salun.eval.clip_score import clip_score

    images = torch.rand(3, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a cat", "a red car", "x" * 300]  # the last one is truncated to 77
    out = clip_score(images, prompts, clip_dir)
    assert out["n"] == 3 and len(out["per_image"]) == 3
    assert all(0.0 <= s <= 100.0 for s in out["per_image"])
    assert out["clip_score"] == pytest.approx(np.mean(out["per_image"]))

    model = transformers.CLIPModel.from_pretrained(clip_dir, use_safetensors=True)
    proc = transformers.CLIPProcessor.from_pretrained(clip_dir)
    from salun.eval._images import to_pil

    batch = proc(
        text=prompts,
        images=to_pil(images),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=77,
    )
    with torch.no_grad():
        res = model(**batch)
    cos = torch.nn.functional.cosine_similarity(res.image_embeds, res.text_embeds)
    assert out["per_image"] == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)

    with pytest.raises(SalunError, match="got 3 images but 2 prompts"):
        clip_score(images, prompts[:2], clip_dir)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((clip_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(SalunError, match="found pytorch_model.bin: pickled weights are refused"):
        clip_score(images, prompts, pickled)


# ---------------------------------------------------------------- ImageNet class UA
@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("resnet")
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=1000
    )
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config)
    with torch.no_grad():  # make English springer (217) the top-1, golf ball (574) the runner-up
        model.classifier[1].bias.zero_()
        model.classifier[1].bias[217] = 50.0
        model.classifier[1].bias[574] = 40.0
    model.save_pretrained(folder)
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )

    ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(folder)
    return folder, model.eval()


def test_imagenet_class_ua(resnet_dir, tmp_path):
    from salun.eval._images import to_pil
    from salun.eval.imagenet_ua import IMAGENETTE, ImageNetClassifier, class_accuracy, class_ua

    folder, original = resnet_dir
    assert list(IMAGENETTE.values()) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    clf = ImageNetClassifier(folder)
    images = torch.rand(4, 3, 36, 36, generator=torch.Generator().manual_seed(0))
    pixels = clf.processor(
        images=to_pil(images),
        return_tensors="pt",
    )["pixel_values"]
    with torch.no_grad():
        expected = original(pixel_values=pixels).logits
    torch.testing.assert_close(clf.logits(images), expected)  # reloaded == saved

    res = class_accuracy(clf, {"English springer": images, "tench": images[:2]}, erased="tench")
    assert res["per_class"]["English springer"]["accuracy"] == 100.0
    assert res["per_class"]["tench"]["accuracy"] == 0.0
    assert res["ua"] == 100.0 and res["other_accuracy"] == 100.0
    assert class_ua(clf, images, "English springer") == 0.0
    # a non-Imagenette class (5) on top: the top-1 over 1000 is 5, over the ten it is golf ball
    clf.model.classifier[1].bias.data[217] = -50.0
    clf.model.classifier[1].bias.data[5] = 45.0
    assert (clf.predict(images) == 5).all()
    assert (clf.predict(images, restrict=True) == 574).all()
    with pytest.raises(SalunError, match="unknown Imagenette class 'cat'; allowed: "):
        class_ua(clf, images, "cat")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(SalunError, match="no \\*.safetensors weights .*pytorch_model.bin"):
        ImageNetClassifier(pickled)
    with pytest.raises(SalunError, match="neither a local folder nor a hub id"):
        ImageNetClassifier(tmp_path / "absent")
