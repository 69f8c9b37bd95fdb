"""Hostile inputs to sampling and text-to-image runs (issue 20): DDPM folders and ``salun
sample`` options out of range, broken diffusers pipeline folders, captioned image folders and
I2P prompt files that are not what they claim. Each is one line on stderr, exit 2, nothing
written."""

import json
import shutil
import struct
import zlib
from argparse import Namespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from salun.cli import main
from salun.core.errors import SalunError
from salun.core.limits import MAX_SEED
from salun.eval.prompts import read_i2p_csv

pytestmark = pytest.mark.diffusion


def _fails(argv, out, capsys, match):
    """``salun argv`` exits 2 with exactly one stderr line containing ``match``; ``out`` absent."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    assert match in err[0], err[0]
    assert not out.exists()
    return err[0]


# -- DDPM folders and `salun sample` ----------------------------------------------------------
@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory, cache_dir):
    """An untrained smoke/ddpm model folder (10 classes, 50 timesteps)."""
    from salun.config import load_config
    from salun.run import prepare
    from salun.tasks.ddpm.ddpm_folders import save_ddpm

    exp = prepare(load_config("smoke/ddpm", [f"cache_dir={cache_dir}"]))
    return save_ddpm(exp.new_model(), exp, tmp_path_factory.mktemp("ddpm") / "model")


def _sample(model, out, *extra):
    return ["sample", "--model", str(model), "--out", str(out), "--no-progress", *extra]


def test_sample_steps_above_the_model_timesteps(ddpm_folder, tmp_path, capsys):
    out = tmp_path / "s"
    _fails(
        _sample(ddpm_folder, out, "--steps", "51", "--n", "1"),
        out,
        capsys,
        "--steps must be in 1..50 (the model's training timesteps), got 51",
    )


@pytest.mark.parametrize(
    "meta, classes",
    [
        ({"num_classes": 40, "null_label": 40}, None),
        ({"num_classes": 40, "null_label": 40}, "30"),
        ({"null_label": 11}, None),
        ({"num_classes": 12}, "0"),
    ],
)
def test_sample_folder_whose_labels_do_not_fit_the_unet(
    ddpm_folder, tmp_path, capsys, meta, classes
):
    folder = tmp_path / "model"
    shutil.copytree(ddpm_folder, folder)
    data = json.loads((folder / "salun.json").read_text())
    (folder / "salun.json").write_text(json.dumps({**data, **meta}))
    out = tmp_path / "s"
    extra = ["--classes", classes] if classes else []
    line = _fails(
        _sample(folder, out, "--steps", "1", "--n", "1", *extra),
        out,
        capsys,
        "do not fit the unet's 11 class embeddings (need num_classes <= null_label <= 10)",
    )
    assert "salun.json in" in line


def test_sample_seed_out_of_range(ddpm_folder, tmp_path, capsys):
    out = tmp_path / "s"
    _fails(
        _sample(ddpm_folder, out, "--seed", str(2**70)),
        out,
        capsys,
        f"--seed must be in 0..{MAX_SEED}, got {2**70}",
    )


def test_sample_request_over_the_size_limit(ddpm_folder, tmp_path, capsys):
    from salun.cli.cmd_sample import _check_size

    out = tmp_path / "s"
    line = _fails(
        _sample(ddpm_folder, out, "--n", "1000000"),
        out,
        capsys,
        "over the limit of 1,000,000; lower --n or --steps, or pass --allow-large",
    )
    assert "--n 1000000 x 10 classes x --steps 50 = 500,000,000 denoising passes" in line
    _check_size(Namespace(n=10**6, steps=50, allow_large=True), 10)  # the flag lifts it


def test_sample_api_refuses_steps_and_seed_out_of_range(ddpm_folder):
    from salun.eval.generation import sample
    from salun.tasks.ddpm.ddpm_folders import load_ddpm

    unet, scheduler, _ = load_ddpm(ddpm_folder)
    labels = torch.tensor([0])
    with pytest.raises(SalunError, match="sampling steps must be in 1..50"):
        sample(unet, labels, scheduler, 10, steps=51)
    with pytest.raises(SalunError, match=f"sampling seed must be in 0..{MAX_SEED}"):
        sample(unet, labels, scheduler, 10, steps=1, seed=2**70)


# -- text-to-image pipeline folders -----------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """The smoke/sd tiny pipeline saved as a diffusers folder."""
    from salun.config import load_config
    from salun.tasks.text_to_image.text_to_image_io import save_pipeline
    from salun.tasks.text_to_image.text_to_image_runs import build_pipeline

    pipe = build_pipeline(load_config("smoke/sd"))
    return save_pipeline(pipe, tmp_path_factory.mktemp("sd") / "pipe")


def _unlearn(tmp_path, out, *overrides):
    return ["unlearn", "smoke/sd", f"cache_dir={tmp_path / 'cache'}", *overrides, "--out", str(out)]


def _edit_index(folder, edit):
    index = json.loads((folder / "model_index.json").read_text())
    edit(index)
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda m: m.update(unet=m["vae"], vae=m["unet"]),
            'unet must be ["diffusers", a UNet2DConditionModel class], got '
            '["diffusers", "AutoencoderKL"]',
        ),
        (
            lambda m: m.update(unet=[m["unet"]]),
            'unet must be ["diffusers", a UNet2DConditionModel class], got [["diffusers"',
        ),
        (lambda m: m.update(unet=None), "unet must be"),
        (lambda m: m.update(unet=["os", "system"]), 'got ["os", "system"]'),
        (lambda m: m.update(text_encoder=m["unet"], unet=m["text_encoder"]), "must be ["),
        (lambda m: m.update(feature_extractor=["builtins", "eval"]), "feature_extractor must be"),
        (lambda m: m.update(_class_name=[]), "_class_name must be a string"),
    ],
)
def test_model_index_with_parts_swapped_or_malformed(sd_folder, tmp_path, capsys, edit, match):
    folder = tmp_path / "pipe"
    shutil.copytree(sd_folder, folder)
    _edit_index(folder, edit)
    out = tmp_path / "run"
    line = _fails(_unlearn(tmp_path, out, f"text_to_image.pipeline={folder}"), out, capsys, match)
    assert "model_index.json" in line


def test_unet_with_nan_weights_is_refused_before_the_mask(sd_folder, tmp_path, capsys):
    folder = tmp_path / "pipe"
    shutil.copytree(sd_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    out = tmp_path / "run"
    _fails(
        _unlearn(tmp_path, out, f"text_to_image.pipeline={folder}"),
        out,
        capsys,
        "unet/ holds non-finite weights (NaN or inf) in 'conv_in.weight'",
    )


def test_unet_of_the_wrong_shape(sd_folder, tmp_path, capsys):
    folder = tmp_path / "pipe"
    shutil.copytree(sd_folder, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    _fails(
        _unlearn(tmp_path, out, "--model", str(folder)),
        out,
        capsys,
        "unet/ weights do not fit unet/config.json (size mismatch for conv_in.weight",
    )


# -- captioned image folders ------------------------------------------------------------------
def _png(path, size=(4, 4)):
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)


def _bomb_png(path, side=100_000):
    """A PNG whose header says side x side pixels (PIL refuses it on open, before decoding)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _image_folder(root):
    """forget/ with captions.csv, retain/ with a .txt beside each image."""
    forget, retain = root / "forget", root / "retain"
    forget.mkdir(parents=True)
    retain.mkdir()
    for name in ("a.png", "b.png"):
        _png(forget / name)
        _png(retain / name)
        (retain / name).with_suffix(".txt").write_text("a photo of a dog", encoding="utf-8")
    (forget / "captions.csv").write_text(
        "file,caption\na.png,a photo of a nude person\nb.png,a photo of a nude person\n",
        encoding="utf-8",
    )
    return root


def test_a_valid_image_folder_reads_with_symlinks_inside_it(tmp_path):
    from salun.tasks.text_to_image.text_to_image_files import read_caption_folder

    root = _image_folder(tmp_path / "images")
    (root / "forget" / "sub").mkdir()
    (root / "forget" / "sub" / "c.png").symlink_to(root / "forget" / "a.png")
    with open(root / "forget" / "captions.csv", "a", encoding="utf-8") as f:
        f.write('sub/c.png,"a nude person, again"\n')
    images, captions = read_caption_folder(root / "forget", 8)
    assert images.shape == (3, 3, 8, 8) and captions[2] == "a nude person, again"
    images, captions = read_caption_folder(root / "retain")
    assert images.shape == (2, 3, 4, 4) and captions == ["a photo of a dog"] * 2


def _latin1_table(forget):
    (forget / "captions.csv").write_bytes(b"file,caption\na.png,a nude person\nb.png,caf\xe9\n")


def _latin1_txt(root):
    (root / "retain" / "b.txt").write_bytes(b"a caf\xe9 dog")


def _long_caption(forget):
    (forget / "captions.csv").write_text(f"file,caption\na.png,{'x' * 140_000}\n")


def _no_caption(forget):
    (forget / "captions.csv").write_text("file,caption\na.png,a nude person\nb.png\n")


def _bomb(forget):
    _bomb_png(forget / "b.png")


def _parent_path(forget):
    _png(forget.parent / "outside.png")
    (forget / "captions.csv").write_text("file,caption\n../outside.png,a nude person\n")


def _absolute_path(forget):
    _png(forget.parent / "outside.png")
    (forget / "captions.csv").write_text(f"file,caption\n{forget.parent / 'outside.png'},x\n")


def _symlink_out(forget):
    _png(forget.parent / "outside.png")
    (forget / "b.png").unlink()
    (forget / "b.png").symlink_to(forget.parent / "outside.png")


@pytest.mark.parametrize(
    "spoil, match",
    [
        (_latin1_table, "captions.csv' line 3: byte 0xe9 is not UTF-8 (save the file as UTF-8)"),
        (_latin1_txt, "b.txt' line 1: byte 0xe9 is not UTF-8"),
        (_long_caption, "captions.csv' line 2: a cell is longer than 131,072 characters"),
        (_no_caption, "captions.csv' line 3 ('b.png'): no caption"),
        (_bomb, "captions.csv' line 3) cannot be read: Image size (10000000000 pixels)"),
        (_parent_path, "captions.csv' line 2: "),
        (_absolute_path, "captions.csv' line 2: "),
        (_symlink_out, "captions.csv' line 3: "),
    ],
)
def test_image_folder_problems_are_one_line_naming_file_and_row(tmp_path, capsys, spoil, match):
    root = _image_folder(tmp_path / "images")
    spoil(root / "forget") if spoil is not _latin1_txt else spoil(root)
    out = tmp_path / "run"
    line = _fails(_unlearn(tmp_path, out, f"text_to_image.image_folder={root}"), out, capsys, match)
    if spoil in (_parent_path, _absolute_path, _symlink_out):
        assert "leads outside the image folder" in line
    if spoil is _bomb:
        assert "could be decompression bomb" in line or "over the limit of" in line


# -- I2P prompt files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, match",
    [
        (b"prompt,seed,guidance\nx,1e20,7\n", f"line 2: seed 1e20 must be in 0..{MAX_SEED}"),
        (b"prompt,seed,guidance\nx,-1,7\n", "seed -1 must be in"),
        (b"prompt,seed,guidance\ncaf\xe9,1,7\n", "line 2: byte 0xe9 is not UTF-8"),
        (
            b"prompt,seed,guidance\n" + b"x" * 140_000 + b",1,7\n",
            "line 2: a cell is longer than 131,072 characters",
        ),
    ],
)
def test_i2p_csv_problems_are_one_line(tmp_path, capsys, data, match):
    path = tmp_path / "i2p.csv"
    path.write_bytes(data)
    with pytest.raises(SalunError, match=match.replace("(", r"\(").replace(")", r"\)")) as err:
        read_i2p_csv(path)
    assert "\n" not in str(err.value) and "i2p.csv" in str(err.value)
    out = tmp_path / "run"  # and through the CLI, before the pipeline is built
    _fails(_unlearn(tmp_path, out, f"text_to_image.i2p_csv={path}"), out, capsys, match)
