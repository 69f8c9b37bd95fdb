"""Issue 20: an --out folder never deletes the current folder, home or an input; one run at a
time writes it; a checkpoint resumes only its own run; a resumed run's RTE counts every
stretch and says it was resumed."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from salun.cli import main
from salun.core.errors import SalunError
from salun.core.io import check_out, load_tensors, read_metadata, save_tensors, staged_folder
from salun.methods._fit import recording

TRAIN = ["train", "smoke/digits", "threads=1", "train.epochs=1", "--no-progress"]


def _fails(argv, capsys, *words: str) -> str:
    """The CLI exits 2 with one line on stderr holding ``words``."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("salun: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- 1. --out never is, nor holds, the current folder, home or an input -------------------------
def test_out_holding_the_current_folder_is_refused(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "keep.txt").write_text("sibling")
    monkeypatch.chdir(work / "sub")
    cache = f"cache_dir={tmp_path / 'cache'}"
    _fails([*TRAIN, cache, "--out", "..", "--overwrite"], capsys, "'..'", "current folder")
    # a symlink to the parent is resolved first
    (tmp_path / "link").symlink_to(work)
    argv = [*TRAIN, cache, "--out", str(tmp_path / "link"), "--overwrite"]
    _fails(argv, capsys, "current folder")
    assert (work / "keep.txt").read_text() == "sibling" and (work / "sub").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["link", "work"]  # nothing written, not even the cache


def test_out_being_home_is_refused(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    argv = [*TRAIN, f"cache_dir={tmp_path / 'c'}", "--out", str(home), "--overwrite"]
    _fails(argv, capsys, "is your home folder")
    _fails([*argv[:-3], "--out", str(tmp_path), "--overwrite"], capsys, "holds your home folder")
    assert (home / ".bashrc").read_text() == "x"


def test_out_holding_an_input_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    model_dir = runs / "ddpm" / "model"  # a DDPM folder given to `salun sample`
    model_dir.mkdir(parents=True)
    (model_dir / "salun.json").write_text("{}")
    orig = runs / "orig"
    orig.mkdir()
    (orig / "model.safetensors").write_bytes(b"weights")
    (orig / "split.json").write_text("{}")
    (runs / "cache").mkdir()
    (runs / "cache" / "original-x.safetensors").write_bytes(b"cached")
    before = _tree(tmp_path)
    cache = f"cache_dir={runs / 'cache'}"
    cases = [
        (["sample", "--model", str(model_dir), "--out", str(model_dir)], "is the input"),
        (["sample", "--model", str(model_dir), "--out", str(runs / "ddpm")], "holds the input"),
        ([*TRAIN, cache, "--out", str(runs)], "holds the input"),  # the cache
        ([*TRAIN, cache, "--out", str(runs / "cache")], "is the input"),
        (  # the split and the model given as inputs
            ["unlearn", "smoke/digits", cache, "--split", str(orig / "split.json")]
            + ["--model", str(orig / "model.safetensors"), "--out", str(orig)],
            "holds the input",
        ),
        (["mask", "smoke/digits", "--model", str(orig / "model.safetensors"), "--out", str(orig)],)
        + ("holds the input",),
        (["eval", "smoke/digits", "--model", str(orig / "model.safetensors"), "--out", str(orig)],)
        + ("holds the input",),
        (["bench", "smoke/digits-random", "--out", str(Path.cwd())], "current folder"),
    ]
    for argv, words in cases:
        overwrite = ["--overwrite"] if argv[0] not in ("eval", "bench") else []
        _fails([*argv, *overwrite], capsys, words)
    # relative paths are resolved: ./runs/cache/.. is runs
    rel = os.path.relpath(runs / "cache" / "..")
    _fails([*TRAIN, cache, "--out", rel, "--overwrite"], capsys, "holds the input")
    assert _tree(tmp_path) == before


# -- 2. one run at a time writes an --out folder -------------------------------------------------
def test_two_concurrent_trains_never_replace_each_other(tmp_path):
    out = tmp_path / "same"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "salun", *TRAIN, f"cache_dir={tmp_path / f'c{i}'}"]
            + ["--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2).strip().splitlines()
    assert len(err) == 1, err
    assert any(
        w in err[0]
        for w in ("being written by another salun run", "not empty", "written by another salun")
    ), err
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "original" and (out / "model.safetensors").is_file()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no lock, no partial


def test_a_folder_being_written_is_refused(tmp_path, capsys):
    """Another process holds the folder's lock: the run fails at once, writing nothing."""
    out = tmp_path / "run"
    hold = (
        "import sys, time; from salun.core.io import out_lock\n"
        "with out_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        argv = [*TRAIN, f"cache_dir={tmp_path / 'c'}", "--out", str(out)]
        _fails(argv, capsys, "being written by another salun run")
        assert time.perf_counter() - start < 30
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_never_replaces_a_folder_that_appeared_while_it_ran(tmp_path):
    out = tmp_path / "run"
    check_out(out, overwrite=False)  # absent when the run started
    out.mkdir()
    (out / "metrics.json").write_text('{"the": "other run"}')  # another run finished first
    refused = pytest.raises(SalunError, match="written by another salun run while this one ran")
    with refused, staged_folder(out) as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert (out / "metrics.json").read_text() == '{"the": "other run"}'
    assert sorted(os.listdir(tmp_path)) == ["run"]


# -- 3. demo --out EXISTING_RUN --------------------------------------------------------------
def test_demo_into_an_existing_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "audit.json").write_text("{}")
    before = _tree(run)
    argv = ["demo", "--dataset", "digits", "--no-progress", "--out", str(run)]
    _fails(argv, capsys, "not empty", "--overwrite")
    _fails([*argv[:-2], "--task", "ddpm", "--out", str(run)], capsys, "not empty")
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


# -- 4 and 5. resume: only the same run; validated; total time and resume count --------------
FT = [
    "unlearn",
    "smoke/digits",
    "threads=1",
    "unlearn.method=ft",
    "unlearn.params.epochs=3",
    "unlearn.params.batch_size=32",
    "runtime.checkpoint_every=1",
    "--no-progress",
    "--no-compare",
]


def _ckpt(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.checkpoints"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An FT run interrupted after its first epoch (its checkpoints stay beside the folder)."""
    base = tmp_path_factory.mktemp("interrupted")
    cut = base / "cut"

    def stop(record):
        if record["desc"] != "train original" and record["epoch"] == 1:
            raise KeyboardInterrupt

    args = [*FT, f"cache_dir={base / 'cache'}"]
    with recording(callbacks=[stop]):
        assert main([*args, "--out", str(cut)]) == 130
    assert not cut.exists() and any(_ckpt(cut).glob("*.safetensors"))
    return base, args


def _copy(interrupted, tmp_path) -> Path:
    base, _ = interrupted
    out = tmp_path / "cut"
    shutil.copytree(_ckpt(base / "cut"), _ckpt(out))
    return out


def _ft_checkpoint(out: Path) -> Path:
    (path,) = [p for p in _ckpt(out).glob("*.safetensors") if not p.name.startswith("train_")]
    return path


def test_resume_refuses_a_checkpoint_of_another_forget_class(interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    argv = [*interrupted[1], "data.forget_class=5", "--out", str(out), "--resume"]
    line = _fails(argv, capsys, "from another run", "data.forget_class: 3 there, 5 now")
    assert "--resume" in line and not out.exists()


def test_resume_refuses_a_checkpoint_of_another_training_subset(interrupted, tmp_path, capsys):
    """The same original given as --model: FT starts from the same weights on other data."""
    out = _copy(interrupted, tmp_path)
    (model,) = (interrupted[0] / "cache").glob("original-*.safetensors")
    argv = [*interrupted[1], "data.train_subset=500", "--model", str(model), "--out", str(out)]
    argv.append("--resume")
    _fails(argv, capsys, "from another run", "data.train_subset: 600 there, 500 now")


@pytest.mark.parametrize("epoch", [10**30, -1, 1.5, "1", True, 4])
def test_resume_refuses_an_impossible_position(interrupted, tmp_path, capsys, epoch):
    out = _copy(interrupted, tmp_path)
    path = _ft_checkpoint(out)
    meta = json.loads(read_metadata(path)["salun"])
    meta["position"]["epoch"] = epoch
    save_tensors(path, load_tensors(path), {"salun": json.dumps(meta)})
    argv = [*interrupted[1], "--out", str(out), "--resume"]
    _fails(argv, capsys, "position.epoch", "allowed: 0..3")
    assert not out.exists()


def test_resume_counts_every_stretch_and_says_so(interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    before = json.loads(read_metadata(_ft_checkpoint(out))["salun"])["seconds"]
    assert before > 0
    capsys.readouterr()
    assert main([*interrupted[1], "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["resumed"] == 1
    assert run["rte_seconds"] >= before
    assert f"RTE {run['rte_seconds']:.2f}s (resumed 1 time: total over 2 stretches)" in printed
    assert not _ckpt(out).exists()
