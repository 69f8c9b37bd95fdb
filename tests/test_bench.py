"""The bench harness: resumable after a kill, report recomputed from the run folders."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from salun.bench import expand_grid
from salun.cli import main
from salun.config import load_config
from salun.core.errors import SalunError

SMOKE = ["digits-random10", "bench.seeds=[0,1]"]
METRICS = ("UA", "MIA-Efficacy", "RA", "TA")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "full"
    # two runs at a time: the same report as --jobs 1 (tests/test_bench_parallel.py), half the wait
    assert main(["bench", *SMOKE, "--jobs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def _metrics(folder: Path) -> dict:
    return {
        p.parent.relative_to(folder).as_posix(): json.loads(p.read_text())
        for p in folder.glob("*/seed*/*/metrics.json")
    }


def test_grid_expansion():
    runs = expand_grid(load_config("digits-random10", ["bench.methods.salun.lr=[0.001,0.01]"]))
    names = [r.name for r in runs]
    assert "random10/seed0/original" in names and "random10/seed1/retrain" in names
    assert "random10/seed0/salun_lr=0.001_" in names and "random10/seed0/salun_lr=0.01_" in names
    assert "random10/seed1/retrain_prime" in names  # Retrain': the noise floor
    assert len(runs) == 2 * (3 + 4)


def test_bad_grid_fails_before_any_run(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", *SMOKE, "bench.methods.ft.lrr=0.1", "--out", str(out)]) == 2
    assert "unknown parameter of method 'ft' 'lrr'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SalunError, match="no 'bench' section"):
        expand_grid(load_config("smoke/digits"))


def test_report_cell_recomputed_by_hand(bench_dir):
    runs = _metrics(bench_dir)
    assert len(runs) == 12  # 2 seeds x (original, Retrain, Retrain', 3 methods)
    report = json.loads((bench_dir / "report.json").read_text())
    row = next(r for r in report["scenarios"]["random10"] if r["label"] == "salun")
    ua = [runs[f"random10/seed{s}/salun"]["metrics"]["UA"] for s in (0, 1)]
    assert row["UA"]["mean"] == pytest.approx(np.mean(ua))
    assert row["UA"]["std"] == pytest.approx(np.std(ua, ddof=1))
    gaps = []
    for s in (0, 1):
        m = runs[f"random10/seed{s}/salun"]["metrics"]
        r = runs[f"random10/seed{s}/retrain"]["metrics"]
        gaps.append(sum(abs(m[k] - r[k]) for k in METRICS) / 4)
    assert row["gap"]["Avg. Gap"]["mean"] == pytest.approx(np.mean(gaps))
    half = stats.t.ppf(0.975, 1) * np.std(gaps, ddof=1) / math.sqrt(2)
    assert row["gap"]["Avg. Gap"]["ci95"] == pytest.approx(half)
    for name in ("report.md", "report.csv", "gaps_random10.png", "scatter_random10.png"):
        assert (bench_dir / name).is_file(), name
    text = (bench_dir / "report.md").read_text()
    assert "Original model's training accuracy" in text
    floor = next(r for r in report["scenarios"]["random10"] if r["kind"] == "retrain_prime")
    assert "Noise floor (Avg. Gap of Retrain'" in text
    assert floor["gap"]["Avg. Gap"]["n"] == 2


def _wait_for_done(log: Path, count: int, proc, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if log.exists() and log.read_text().count(" done ") >= count:
            return
        assert proc.poll() is None, "bench finished before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("bench made no progress")


@pytest.mark.slow  # ~3 min on 2 cores; test_bench_faults.py covers a killed bench in the default run
def test_interrupted_bench_resumes_to_the_same_report(bench_dir, tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "salun", "bench", *SMOKE, "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for_done(out / "executions.log", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the run it was executing
    proc.wait()
    finished_before = set(_metrics(out))
    assert 3 <= len(finished_before) < 12
    assert main(["bench", *SMOKE, "--out", str(out), "--no-progress"]) == 0

    log = (out / "executions.log").read_text().splitlines()
    done = [line.split(" done ")[1] for line in log if " done " in line]
    assert sorted(done) == sorted(set(done)) and len(done) == 12  # no finished run ran twice
    trained = [line.split(" trained ")[1] for line in log if " trained " in line]
    assert len(trained) == len(set(trained))  # each original / Retrain model trained once
    assert len(trained) == 6  # 2 seeds x (original, Retrain, Retrain')

    a = json.loads((bench_dir / "report.json").read_text())["scenarios"]
    b = json.loads((out / "report.json").read_text())["scenarios"]
    for ra, rb in zip(a["random10"], b["random10"], strict=True):
        assert ra["label"] == rb["label"]
        for k in METRICS:
            assert ra[k] == rb[k], (ra["label"], k)
            assert ra["gap"][k] == rb["gap"][k]


def test_failed_runs_are_listed(tmp_path, capsys):
    out = tmp_path / "fail"
    rc = main(
        [
            "bench",
            "digits-random10",
            "bench.seeds=[0]",
            "bench.methods={ft: {epochs: 1}}",
            "bench.scenarios={bad: {data.scenario: class, data.forget_class: 99}}",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 1
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report
    assert "forget_class 99 is out of range" in report


def test_tune_selects_on_unreported_seeds(tmp_path, capsys):
    import yaml

    out = tmp_path / "tune"
    rc = main(
        [
            "tune",
            "digits-random10",
            "bench.methods={salun: {epochs: 1, lr: [0.001, 0.02]}}",
            "--seeds",
            "100",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    tuning = json.loads((out / "tuning.json").read_text())
    trials = tuning["trials"]["salun"]
    assert len(trials) == 2 and trials[0]["avg_gap"] <= trials[1]["avg_gap"]
    selected = yaml.safe_load((out / "selected.yaml").read_text())
    assert selected["bench"]["methods"]["salun"]["lr"] == trials[0]["params"]["lr"]
    assert selected["bench"]["seeds"] == [0, 1]  # reporting seeds untouched
    assert all("/seed100/" in p.as_posix() for p in out.glob("*/seed*/*/metrics.json"))
    load_config(str(out / "selected.yaml"))
    assert main(["tune", "digits-random10", "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "also reporting seeds" in capsys.readouterr().err
