"""Files salun reads back (issue 20): masks, weights, splits, bench and demo results, audit
folders, and the writes of safetensors files on a full disk. Each bad file is one line on
stderr and exit 2 (or one line per run in a report), never a traceback, a hang or a silently
wrong result; nothing is left half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from salun.cli import main
from salun.core.io import hash_obj, load_tensors, read_json, read_metadata, save_tensors

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["train.epochs=2", "unlearn.params.epochs=1"]


def fails(argv: list[str], message: str, capsys, regex: bool = False) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line 'salun: error: MESSAGE'."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    want = f"salun: error: {message}"
    assert re.fullmatch(want, lines[0]) if regex else lines[0] == want, lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """smoke/digits (class-wise, class 3): a trained original, its mask and an unlearning run."""
    root = tmp_path_factory.mktemp("readback")
    base = ["smoke/digits", f"cache_dir={root / 'cache'}", *FAST, "--no-progress"]
    assert main(["train", *base, "--out", str(root / "train")]) == 0
    model = str(root / "train" / "model.safetensors")
    assert main(["mask", *base, "--model", model, "--out", str(root / "mask")]) == 0
    mask = str(root / "mask" / "mask.safetensors")
    args = ["unlearn", *base, "--model", model, "--mask", mask, "--out", str(root / "unlearn")]
    assert main(args) == 0
    return root


def unlearn(runs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "unlearn",
        "smoke/digits",
        f"cache_dir={runs / 'cache'}",
        *FAST,
        "--no-progress",
        "--model",
        str(runs / "train" / "model.safetensors"),
        "--no-compare",
        "--out",
        str(out),
        *extra,
    ]


# -- masks: tied to their model and forget set, metadata validated -----------------------------
def test_mask_without_metadata_needs_force(runs, tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    save_tensors(bare, load_tensors(runs / "mask" / "mask.safetensors"))  # no metadata
    fails(
        unlearn(runs, tmp_path / "u", "--mask", str(bare)),
        f"mask {str(bare)!r} has no salun metadata (no model_hash, no data_hash), so nothing "
        "ties it to this model and forget set; pass --force to use it anyway",
        capsys,
    )
    assert not (tmp_path / "u").exists()
    assert main(unlearn(runs, tmp_path / "u", "--mask", str(bare), "--force")) == 0


def test_mask_of_another_forget_class_needs_force(runs, tmp_path, capsys):
    five = tmp_path / "mask5"
    model = str(runs / "train" / "model.safetensors")
    base = ["smoke/digits", f"cache_dir={runs / 'cache'}", *FAST, "--no-progress"]
    assert main(["mask", *base, "data.forget_class=5", "--model", model, "--out", str(five)]) == 0
    mask = five / "mask.safetensors"
    recorded = read_metadata(mask)["data_hash"]
    ours = read_json(runs / "unlearn" / "split.json")["hash"]
    assert recorded != ours
    fails(
        unlearn(runs, tmp_path / "u", "--mask", str(mask)),
        f"mask {str(mask)!r} was computed for another forget set (data_hash {recorded[:12]}; "
        f"this run forgets class 3, data_hash {ours[:12]}); pass --force to use it anyway",
        capsys,
    )
    assert not (tmp_path / "u").exists()
    assert main(unlearn(runs, tmp_path / "u", "--mask", str(mask), "--force")) == 0


MASK_META_CASES = [
    ("ratio", "nan", "metadata ratio='nan' is not a number in (0, 1]"),
    ("ratio", "7", "metadata ratio='7' is not a number in (0, 1]"),
    ("per_layer", "maybe", "metadata per_layer='maybe' is not True or False"),
    ("seconds", "-inf", "metadata seconds='-inf' is not a finite number >= 0"),
    ("model_hash", "xyz", "metadata model_hash='xyz' is not a sha256 (64 hex digits)"),
    ("selected", "7", "metadata selected=7 but the tensors hold {selected}"),
]


@pytest.mark.parametrize("key, value, tail", MASK_META_CASES)
def test_mask_metadata_is_validated(key, value, tail, runs, tmp_path, capsys):
    src = runs / "mask" / "mask.safetensors"
    masks, meta = load_tensors(src), read_metadata(src)
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, masks, {**meta, key: value})
    selected = sum(int(m.sum()) for m in masks.values())
    msg = f"mask file {str(bad)!r}: {tail.format(selected=selected)}"
    fails(unlearn(runs, tmp_path / "u", "--mask", str(bad)), msg, capsys)
    assert not (tmp_path / "u").exists()


def test_mask_metadata_unknown_field(runs, tmp_path, capsys):
    src = runs / "mask" / "mask.safetensors"
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, load_tensors(src), {**read_metadata(src), "UA": "100"})
    msg = f"mask file {str(bad)!r}: unknown metadata field 'UA'; allowed: format, ratio, "
    fails(unlearn(runs, tmp_path / "u", "--mask", str(bad)), re.escape(msg) + ".*", capsys, True)


# -- weights: names, shapes and the kind of dtype must be the model's --------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weights_are_refused(dtype, runs, tmp_path, capsys):
    state = load_tensors(runs / "train" / "model.safetensors")
    bad = tmp_path / "w.safetensors"
    save_tensors(bad, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    kind = str(dtype).removeprefix("torch.")
    fails(
        ["eval", "smoke/digits", f"cache_dir={runs / 'cache'}", "--model", str(bad)],
        re.escape(f"checkpoint {str(bad)!r}: tensor ")
        + f"'[\\w.]+' is {kind}; the model expects floating-point \\(float32\\)",
        capsys,
        regex=True,
    )


def test_ddpm_folder_with_integer_weights_is_refused(tmp_path, capsys, monkeypatch):
    from salun.config import load_config
    from salun.run import prepare
    from salun.tasks.ddpm.ddpm_folders import save_ddpm

    exp = prepare(load_config("smoke/ddpm", [f"cache_dir={tmp_path / 'cache'}"]))
    folder = save_ddpm(exp.new_model(), exp, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_tensors(weights)
    save_tensors(weights, {k: v.to(torch.int64) for k, v in state.items()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "s"
    fails(
        ["sample", "--model", str(folder), "--out", str(out), "--steps", "1", "--n", "1"],
        re.escape(f"DDPM folder {str(folder)!r}: tensor ")
        + r"'[\w.]+' is int64; the model expects floating-point \(float32\)",
        capsys,
        regex=True,
    )
    assert not out.exists()


# -- splits: a class-wise split forgets exactly its class; empty parts; bounded JSON -----------
def _split(runs: Path) -> dict:
    return read_json(runs / "unlearn" / "split.json")


def _rehash(d: dict) -> dict:
    keys = ("dataset", "scenario", "forget_class", "train", "val", "test", "forget", "retain")
    d["hash"] = hash_obj({k: d[k] for k in keys})
    return d


def _eval_split(runs: Path, path: Path) -> list[str]:
    return [
        "eval",
        "smoke/digits",
        f"cache_dir={runs / 'cache'}",
        "--model",
        str(runs / "train" / "model.safetensors"),
        "--split",
        str(path),
    ]


def _labels() -> tuple:
    from salun.data.datasets import load_dataset

    bundle = load_dataset("digits", None, None)
    return bundle.train.labels.numpy(), bundle.test.labels.numpy()


def test_class_split_rehashed_with_other_classes_is_refused(runs, tmp_path, capsys):
    train_labels, _ = _labels()
    d = _split(runs)
    other = next(i for i in d["retain"] if train_labels[i] != 3)
    d["forget"] = sorted(d["forget"] + [other])
    d["retain"] = [i for i in d["retain"] if i != other]
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_rehash(d)))
    fails(
        _eval_split(runs, path),
        f"split file {str(path)!r}: the forget set of a class-wise split must be exactly "
        f"class 3's training images; index {other} of class {train_labels[other]}",
        capsys,
    )


def test_class_split_missing_some_of_the_class_is_refused(runs, tmp_path, capsys):
    d = _split(runs)
    moved = d["forget"][0]
    d["forget"] = d["forget"][1:]
    d["retain"] = sorted(d["retain"] + [moved])
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_rehash(d)))
    fails(
        _eval_split(runs, path),
        f"split file {str(path)!r}: the forget set of a class-wise split must be exactly "
        "class 3's training images; 1 images of class 3 are not in it",
        capsys,
    )


def test_class_split_testing_on_the_forgotten_class_is_refused(runs, tmp_path, capsys):
    _, test_labels = _labels()
    d = _split(runs)
    leak = next(i for i in range(len(test_labels)) if test_labels[i] == 3)
    d["test"] = sorted(d["test"] + [leak])
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_rehash(d)))
    fails(
        _eval_split(runs, path),
        f"split file {str(path)!r}: test index {leak} is of the forgotten class 3; a "
        "class-wise split tests on the other classes only",
        capsys,
    )


@pytest.mark.parametrize("part", ["retain", "test"])
def test_split_with_an_empty_part_is_refused(part, runs, tmp_path, capsys):
    d = _split(runs)
    if part == "retain":  # everything forgotten: forget = train
        d["forget"], d["retain"] = sorted(d["forget"] + d["retain"]), []
    else:
        d["test"] = []
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_rehash(d)))
    fails(_eval_split(runs, path), f"split file {str(path)!r}: the {part} set is empty", capsys)


def test_split_scenario_and_class_must_agree(runs, tmp_path, capsys):
    d = _split(runs)
    d["forget_class"] = None
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_rehash(d)))
    fails(
        _eval_split(runs, path),
        f"split file {str(path)!r}: scenario 'class' with forget_class None; a class-wise "
        "split names its forget class, a random split none",
        capsys,
    )


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_split_is_one_line(depth, runs, tmp_path, capsys):
    path = tmp_path / "split.json"
    path.write_text("[" * depth + "]" * depth)
    fails(
        _eval_split(runs, path),
        f"split file {str(path)!r} is nested deeper than 64 levels (the limit)",
        capsys,
    )


def test_split_fifo_does_not_hang(runs, tmp_path, capsys):
    path = tmp_path / "split.json"
    os.mkfifo(path)
    fails(_eval_split(runs, path), f"split file {str(path)!r} is not a regular file", capsys)


# -- salun report: missing and unreadable runs are listed, never a traceback ------------------
def _bench_run(label: str, kind: str, seed: int, ua: float = 10.0) -> dict:
    return {
        "scenario": "random10",
        "seed": seed,
        "label": label,
        "kind": kind,
        "method": label if kind == "unlearn" else None,
        "dataset": "digits",
        "metrics": {"UA": ua, "MIA-Efficacy": ua, "RA": 95.0, "TA": 90.0},
        "run": {"rte_seconds": 1.0},
        "original_train_acc": 99.0,
    }


def _bench(root: Path) -> Path:
    names = []
    for seed in (0, 1):
        for label, kind in (("retrain", "retrain"), ("ft", "unlearn")):
            name = f"random10/seed{seed}/{label}"
            names.append(name)
            d = root / name
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"name": name}))
            (d / "metrics.json").write_text(json.dumps(_bench_run(label, kind, seed)))
    (root / "grid.json").write_text(json.dumps(names))
    return root


BENCH_CASES = [
    ("deleted", None, "no metrics.json (not finished, or deleted)"),
    ("corrupt", "{oops", "unreadable metrics.json: metrics.json is not valid JSON: Expecting"),
    ("list", "[1, 2]", "unreadable metrics.json: not a JSON object (a list)"),
    ("empty", "{}", "unreadable metrics.json: scenario is missing"),
    ("ua-abc", "UA", "unreadable metrics.json: metrics.UA is 'abc', not a number"),
    ("deep", "[" * 5000 + "]" * 5000, "unreadable metrics.json: metrics.json is nested deeper"),
]


@pytest.mark.parametrize("case, text, reason", BENCH_CASES)
def test_report_lists_missing_and_unreadable_bench_runs(case, text, reason, tmp_path, capsys):
    bench = _bench(tmp_path / "b")
    metrics = bench / "random10/seed1/ft/metrics.json"
    if text is None:
        metrics.unlink()
    elif text == "UA":
        m = json.loads(metrics.read_text())
        m["metrics"]["UA"] = "abc"
        metrics.write_text(json.dumps(m))
    else:
        metrics.write_text(text)
    assert main(["report", str(bench), "--no-plots"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    line = next(x for x in out.out.splitlines() if x.startswith("- `random10/seed1/ft`"))
    assert line.startswith(f"- `random10/seed1/ft`: {reason}"), line
    assert len(line.splitlines()) == 1
    assert "| FT | 1 |" in out.out  # the readable seed is still reported


def test_report_lists_a_run_folder_deleted_from_the_grid(tmp_path, capsys):
    bench = _bench(tmp_path / "b")
    shutil.rmtree(bench / "random10/seed1/ft")
    assert main(["report", str(bench), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "- `random10/seed1/ft`: missing: the run's folder or run.json is gone" in out


def _demo_metrics(scenario: str, ua: float = 5.0) -> dict:
    row = {"name": "SalUn", "UA": ua, "MIA-Efficacy": 9.0, "RA": 98.0, "TA": 95.0}
    return {
        "scenario": scenario,
        "dataset": "digits",
        "seed": 0,
        "title": f"digits {scenario}",
        "rows": [{"name": "Retrain", "UA": 4.0, "RA": 99.0, "TA": 96.0}, row],
        "original": {"info": {"train_acc": 99.0}},
    }


def _demo(root: Path) -> Path:
    for scenario in ("class", "random"):
        d = root / f"digits-{scenario}-seed0"
        d.mkdir(parents=True)
        (d / "split.json").write_text("{}")
        (d / "metrics.json").write_text(json.dumps(_demo_metrics(scenario)))
    return root


def test_demo_report_lists_a_deleted_metrics_file(tmp_path, capsys):
    demo = _demo(tmp_path / "d")
    (demo / "digits-random-seed0" / "metrics.json").unlink()
    assert main(["report", str(demo)]) == 0
    out = capsys.readouterr().out
    assert "## digits class" in out
    assert "## Missing or unreadable runs" in out
    want = f"- {demo / 'digits-random-seed0'}: metrics.json is missing (deleted or unfinished)"
    assert want in out.splitlines()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[]", "metrics.json is unreadable: not a JSON object (a list)"),
        ("{}", "metrics.json is unreadable: scenario is missing"),
        ("{oops", "metrics.json is not valid JSON: Expecting property name"),
    ],
)
def test_demo_report_with_nothing_readable_is_one_line(text, reason, tmp_path, capsys):
    demo = _demo(tmp_path / "d")
    for d in demo.iterdir():
        (d / "metrics.json").write_text(text)
    fails(
        ["report", str(demo)],
        f"{re.escape(repr(str(demo)))} holds no readable demo results: "
        f"digits-class-seed0: {re.escape(reason)}.*",
        capsys,
        regex=True,
    )


def test_demo_report_with_a_bad_value_lists_that_run(tmp_path, capsys):
    demo = _demo(tmp_path / "d")
    bad = _demo_metrics("random")
    bad["rows"][1]["UA"] = "abc"
    (demo / "digits-random-seed0" / "metrics.json").write_text(json.dumps(bad))
    assert main(["report", str(demo)]) == 0
    out = capsys.readouterr().out
    assert (
        f"- {demo / 'digits-random-seed0'}: metrics.json is unreadable: rows[1]: UA is 'abc', "
        "not a number"
    ) in out.splitlines()


# -- salun audit: plain files only, a well-formed record ---------------------------------------
@pytest.fixture
def run_copy(runs, tmp_path) -> Path:
    return Path(shutil.copytree(runs / "unlearn", tmp_path / "run"))


def test_audit_passes_the_untouched_copy(run_copy, capsys):
    assert main(["audit", str(run_copy)]) == 0


def test_audit_refuses_a_symlinked_run_folder(run_copy, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(run_copy, target_is_directory=True)
    fails(
        ["audit", str(link)],
        f"run folder {str(link)!r} is a symbolic link; give the folder itself",
        capsys,
    )


def test_audit_refuses_symlinked_files(run_copy, tmp_path, capsys):
    outside = tmp_path / "notes.txt"
    outside.write_text("planted")
    (run_copy / "notes.txt").symlink_to(outside)
    fails(
        ["audit", str(run_copy)],
        "audit failed: notes.txt is a symbolic link; a run holds plain files",
        capsys,
    )
    (run_copy / "notes.txt").unlink()
    # a listed file replaced by a link to an identical copy: the hash matches, still refused
    keep = tmp_path / "metrics.json"
    shutil.move(run_copy / "metrics.json", keep)
    (run_copy / "metrics.json").symlink_to(keep)
    fails(
        ["audit", str(run_copy)],
        "audit failed: metrics.json is a symbolic link; a run holds plain files",
        capsys,
    )


def test_audit_refuses_a_symlinked_subfolder(run_copy, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (run_copy / "extra").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    fails(
        ["audit", str(run_copy)],
        "audit failed: extra is a symbolic link; a run holds plain files",
        capsys,
    )


def test_audit_refuses_empty_folders(run_copy, tmp_path, capsys):
    (run_copy / "empty").mkdir()
    fails(
        ["audit", str(run_copy)],
        "audit failed: empty is an empty folder, not part of the run",
        capsys,
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    fails(
        ["audit", str(bare)], f"run folder {str(bare)!r} is empty; it holds no run to audit", capsys
    )


def test_audit_does_not_hang_on_a_fifo(run_copy, capsys):
    (run_copy / "metrics.json").unlink()
    os.mkfifo(run_copy / "metrics.json")
    fails(["audit", str(run_copy)], "audit failed: metrics.json is not a regular file", capsys)


@pytest.mark.parametrize(
    "text, tail",
    [
        ("[1, 2]", " is not a salun-audit-v1 record"),
        ("[" * 100_000 + "]" * 100_000, " is nested deeper than 64 levels (the limit)"),
        ('{"format": "salun-audit-v1", "files": {}}', " is not a salun-audit-v1 record: bad or "),
    ],
)
def test_audit_record_that_is_a_list_or_deep_or_partial(text, tail, run_copy, capsys):
    path = run_copy / "audit.json"
    path.write_text(text)
    prefix = "audit record " if "nested" in tail else ""
    fails(
        ["audit", str(run_copy)],
        re.escape(f"{prefix}{str(path)!r}{tail}") + ".*",
        capsys,
        regex=True,
    )


def test_audit_record_must_match_the_split(run_copy, capsys):
    path = run_copy / "audit.json"
    record = json.loads(path.read_text())
    record["forgotten"]["forget_class"] = 5
    path.write_text(json.dumps(record))
    fails(
        ["audit", str(run_copy)],
        "audit failed: audit.json says it forgot other data than split.json holds",
        capsys,
    )


# -- disk full: every safetensors write goes through core.io and fails with one line ----------
def _no_space(*a, **k):
    from safetensors import SafetensorError

    # what safetensors raises on a full disk (not an OSError)
    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
        'left on device" })'
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or ".partial-" in p.name
    )


@pytest.mark.parametrize("command", ["train", "mask", "unlearn"])
def test_full_disk_is_one_line(command, runs, tmp_path, capsys, monkeypatch):
    import salun.core.io

    monkeypatch.setattr(salun.core.io, "save_file", _no_space)
    out = tmp_path / "out"
    cache = tmp_path / "cache"  # a fresh cache: the cache entry is the first write
    argv = [command, "smoke/digits", f"cache_dir={cache}", *FAST, "--no-progress"]
    if command != "train":
        argv += ["--model", str(runs / "train" / "model.safetensors"), "unlearn.method=ft"]
    fails(
        [*argv, "--out", str(out)],
        r"no space left on device \(/.+\.safetensors\); free some space and run again",
        capsys,
        regex=True,
    )
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_full_disk_in_a_diffusers_folder(tmp_path, monkeypatch):
    import safetensors.torch

    from salun.config import load_config
    from salun.core.errors import SalunError
    from salun.run import prepare
    from salun.tasks.ddpm.ddpm_folders import save_ddpm

    exp = prepare(load_config("smoke/ddpm", [f"cache_dir={tmp_path / 'cache'}"]))
    monkeypatch.setattr(safetensors.torch, "save_file", _no_space)  # what diffusers calls
    with pytest.raises(SalunError) as e:
        save_ddpm(exp.new_model(), exp, tmp_path / "model")
    assert str(e.value) == (
        f"no space left on device ({tmp_path / 'model' / 'unet'}); free some space and run again"
    )
    assert list(tmp_path.iterdir()) == []  # no half-written folder


def test_every_safetensors_write_goes_through_core_io():
    """No module but core/io.py calls save_file or torch.save; every diffusers save_pretrained
    with safetensors sits inside ``with write_errors(...)`` (the one-line disk-full path)."""
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            code = line.split("#")[0]
            if rel != "salun/core/io.py" and re.search(r"\b(save_file|torch\.save)\(", code):
                bad.append(f"{rel}:{i + 1}: {line.strip()}")
            pretrained = re.search(r"\w\.save_pretrained\(", code) and "safe_serialization" in code
            if pretrained and "with write_errors(" not in lines[i - 1]:
                bad.append(f"{rel}:{i + 1}: save_pretrained outside write_errors")
    assert bad == []
