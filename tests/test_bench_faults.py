"""Bench faults (issue 9): a SIGKILLed bench parent takes its worker with it and a re-run repeats
no finished run; stale and corrupt results run again; one bench per folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from salun.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = [
    "digits-random10",
    "bench.seeds=[0]",
    "bench.methods={ft: {epochs: 1, lr: 0.01, batch_size: 64}, ga: {epochs: 1, lr: 0.001, batch_size: 32}}",
    "train.epochs=2",
    "eval.extended=false",
]


def _done(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line.split(" done ")[1] for line in log.read_text().splitlines() if " done " in line]


def _report(out: Path) -> list[dict]:
    rows = json.loads((out / "report.json").read_text())["scenarios"]["random10"]
    return [{k: r[k] for k in ("label", "UA", "MIA-Efficacy", "RA", "TA")} for r in rows]


def _workers_of(out: Path) -> list[int]:
    """PIDs of bench workers running on ``out`` (from /proc)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"salun.bench.worker" in cmd and any(str(out).encode() in c for c in cmd):
                pids.append(int(p.name))
    return pids


def test_kill_bench_parent_only_then_rerun(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(["bench", *TINY, "--out", str(ref), "--no-progress"]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "salun", "bench", *TINY, "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 400  # generous: a loaded 2-core machine
    while len(_done(out / "executions.log")) < 1 or not _workers_of(out):
        assert time.time() < end and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only; its worker is mid-run
    proc.wait()
    end = time.time() + 10
    while _workers_of(out):  # the worker stops with its parent (parent-death signal)
        assert time.time() < end, "the worker outlived the bench parent"
        time.sleep(0.05)
    finished = set(_done(out / "executions.log"))
    n = len(json.loads((out / "grid.json").read_text()))  # original, Retrain, Retrain', ft, ga
    assert 1 <= len(finished) < n
    capsys.readouterr()
    assert main(["bench", *TINY, "--out", str(out), "--no-progress"]) == 0
    assert f"{n - len(finished)} run, {len(finished)} already done" in capsys.readouterr().out
    done = _done(out / "executions.log")
    assert len(done) == len(set(done)) == n  # no finished run ran twice
    assert _report(out) == _report(ref)  # the same figures as an uninterrupted bench

    # a changed config reruns what it changes; a corrupt metrics.json counts as not done
    (out / "random10/seed0/original/metrics.json").write_text("{truncated")
    args = ["bench", *TINY, "bench.methods.ga.lr=0.002", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert f"2 run, {n - 2} already done" in capsys.readouterr().out
    stale = list((out / "random10/seed0/ga").glob("metrics.stale-*.json"))
    corrupt = list((out / "random10/seed0/original").glob("metrics.corrupt-*.json"))
    assert len(stale) == 1 and len(corrupt) == 1  # kept aside, never reported
    ga = json.loads((out / "random10/seed0/ga/metrics.json").read_text())
    assert ga["params"]["lr"] == 0.002


def test_second_bench_on_a_folder_is_refused(tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "b"
    out.mkdir()
    with FileLock(str(out / ".bench.lock")):
        rc = main(["bench", *TINY, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        f"salun: error: bench folder {str(out)!r} is in use by another salun bench; "
        "wait for it to finish"
    ]
    assert sorted(p.name for p in out.iterdir()) == [".bench.lock"]
