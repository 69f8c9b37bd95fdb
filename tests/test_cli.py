"""The CLI end to end on the smoke preset, and every bad input: exit 2, one line, no files."""

import json

import pytest
import torch

from salun.cli import main
from salun.core.io import load_tensors, save_tensors


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cache = f"cache_dir={root / 'cache'}"
    assert main(["train", "smoke/digits", cache, "--out", str(root / "train")]) == 0
    assert (
        main(
            [
                "mask",
                "smoke/digits",
                cache,
                "--out",
                str(root / "mask"),
                "--model",
                str(root / "train" / "model.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "unlearn",
                "smoke/digits",
                cache,
                "--out",
                str(root / "unlearn"),
                "--model",
                str(root / "train" / "model.safetensors"),
                "--mask",
                str(root / "mask" / "mask.safetensors"),
            ]
        )
        == 0
    )
    return root


def test_smoke_preset_end_to_end(smoke_runs, capsys):
    u = smoke_runs / "unlearn"
    for name in ("config.yaml", "split.json", "model.safetensors", "metrics.json", "log.txt"):
        assert (u / name).is_file(), name
    m = json.loads((u / "metrics.json").read_text())
    assert m["method"] == "salun" and m["metrics"]["UA"] > 50
    assert set(m["gap"]) == {"UA", "MIA-Efficacy", "RA", "TA", "Avg. Gap", "ToW"}
    assert 0 <= m["gap"]["ToW"] <= 1 and m["retrain_distance"]["L2-distance"] > 0
    assert set(m["metrics"]["mia_family"]) >= {"SVC-MIA-entropy", "Loss-LR-MIA"}
    assert "MIA-Efficacy" in m["metrics"]["definitions"] and m["versions"]["torch"]
    assert m["run"]["rte_seconds"] > 0


def test_split_identical_across_steps(smoke_runs):
    texts = {(smoke_runs / s / "split.json").read_text() for s in ("train", "mask", "unlearn")}
    assert len(texts) == 1


def test_eval_command(smoke_runs, capsys):
    capsys.readouterr()
    rc = main(
        [
            "eval",
            "smoke/digits",
            "--model",
            str(smoke_runs / "unlearn" / "model.safetensors"),
            "--split",
            str(smoke_runs / "unlearn" / "split.json"),
            "--json",
        ]
    )
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    want = json.loads((smoke_runs / "unlearn" / "metrics.json").read_text())["metrics"]
    assert got["UA"] == pytest.approx(want["UA"]) and got["TA"] == pytest.approx(want["TA"])


def test_list_and_config(capsys):
    assert main(["list", "methods"]) == 0
    assert "salun" in capsys.readouterr().out.split()
    assert main(["list", "ddpm-methods"]) == 0
    ddpm = capsys.readouterr().out.split()
    assert "esd" in ddpm and "salun" in ddpm and "scrub" not in ddpm
    assert main(["config", "smoke/digits", "unlearn.method=ga"]) == 0
    assert "method: ga" in capsys.readouterr().out


def _mismatched_checkpoint(path, smoke_runs):
    state = load_tensors(smoke_runs / "train" / "model.safetensors")
    state["fc.weight"] = torch.zeros(3, 3)
    save_tensors(path, state)


def _mismatched_mask(path, smoke_runs):
    masks = load_tensors(smoke_runs / "mask" / "mask.safetensors")
    masks.pop(next(iter(masks)))
    save_tensors(path, masks)


BAD = [
    (["unlearn.method=saliun"], "unknown method 'saliun'.*Did you mean 'salun'"),
    (["model.name=resnet-18"], "unknown model 'resnet-18'.*'resnet18'"),
    (["data.name=fashion_mnist"], "unknown dataset 'fashion_mnist'.*'fashion-mnist'"),
    (["data.scenario=random", "data.forget_ratio=1.5"], r"forget_ratio must be in \(0, 1\)"),
    (["data.scenario=random", "data.forget_ratio=0"], r"forget_ratio must be in \(0, 1\)"),
    (["data.forget_class=12"], r"forget_class 12 is out of range; allowed: 0..9"),
    (["data.scenario=random", "data.forget_ratio=0.0001"], "forget set is empty"),
    (["unlearn.params.lr=fast"], "must be a number"),
    (["train.epochz=3"], "unknown config key"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_input_exit_2_no_files(overrides, message, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["unlearn", "smoke/digits", *overrides, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize("what", ["missing-model", "bad-model", "missing-mask", "bad-mask"])
def test_bad_checkpoint_or_mask(what, smoke_runs, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "unlearn",
        "smoke/digits",
        "--out",
        str(out),
        "--split",
        str(smoke_runs / "train" / "split.json"),
    ]
    if what == "missing-model":
        args += ["--model", str(tmp_path / "none.safetensors")]
        message = "does not exist"
    elif what == "bad-model":
        _mismatched_checkpoint(tmp_path / "m.safetensors", smoke_runs)
        args += ["--model", str(tmp_path / "m.safetensors")]
        message = "does not match the model"
    elif what == "missing-mask":
        args += ["--mask", str(tmp_path / "none.safetensors")]
        message = "does not exist"
    else:
        _mismatched_mask(tmp_path / "k.safetensors", smoke_runs)
        args += ["--mask", str(tmp_path / "k.safetensors")]
        message = "does not match the model"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_not_a_safetensors_file(tmp_path, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x80\x04not safetensors")
    assert main(["eval", "smoke/digits", "--model", str(bogus)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_unknown_preset(capsys):
    assert main(["config", "smoke/digit"]) == 2
    assert "Did you mean 'smoke/digits'" in capsys.readouterr().err


def test_unlearn_with_population_attacks(tmp_path):
    """U-LiRA and the epsilon score run end to end through the CLI at their smallest budgets."""
    out = tmp_path / "pop"
    rc = main(
        [
            "unlearn",
            "smoke/digits",
            f"cache_dir={tmp_path / 'c'}",
            "eval.ulira=true",
            "eval.ulira_shadows=4",
            "eval.ulira_targets=10",
            "eval.epsilon=true",
            "eval.epsilon_models=3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["ulira"]["n_shadows"] == 4 and 0 <= m["ulira"]["accuracy"] <= 100
    assert 0 <= m["epsilon"]["forgetting_quality"] <= 1


def test_version_and_verbose_after_the_subcommand(capsys):
    import salun

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"salun {salun.__version__}"
    assert main(["list", "methods", "-v"]) == 0  # -v after the subcommand is accepted
    assert "salun" in capsys.readouterr().out.split()
