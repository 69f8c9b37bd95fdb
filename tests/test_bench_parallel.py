"""Many jobs: ``bench --jobs 2`` reproduces ``--jobs 1``; submitit's local backend runs a grid."""

import json
from pathlib import Path

import pytest

from salun.cli import main

SMOKE = [
    "digits-random10",
    "bench.seeds=[0]",
    "threads=1",
    "train.epochs=3",
    "bench.methods={salun: {epochs: 1, lr: 0.005}, ft: {epochs: 1, lr: 0.01}}",
]


def _untimed(obj):
    """The report without wall-clock figures (they differ from run to run)."""
    if isinstance(obj, dict):
        return {
            k: _untimed(v)
            for k, v in obj.items()
            if not any(t in k.lower() for t in ("seconds", "rte", "time", "duration"))
        }
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _trained(out: Path) -> list[str]:
    log = (out / "executions.log").read_text()
    return sorted(line.split()[2] for line in log.splitlines() if " trained " in line)


@pytest.mark.slow  # 8 worker processes: ~1 min on an idle 2-core machine, minutes under load
def test_jobs_2_gives_the_jobs_1_report(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["bench", *SMOKE, "--out", str(one), "--no-progress"]) == 0
    assert main(["bench", *SMOKE, "--out", str(two), "--no-progress", "--jobs", "2"]) == 0
    a = json.loads((one / "report.json").read_text())
    b = json.loads((two / "report.json").read_text())
    assert _untimed(a) == _untimed(b)
    for p in one.glob("*/seed*/*/metrics.json"):
        q = two / p.relative_to(one)
        assert json.loads(p.read_text())["metrics"] == json.loads(q.read_text())["metrics"]
    # the shared models were trained once each, although 5 runs wanted them at the same time
    assert _trained(one) == _trained(two) == ["original", "retrain"]


def test_bad_executor_settings_fail_in_one_line(tmp_path, capsys):
    assert main(["bench", *SMOKE, "--out", str(tmp_path / "b"), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow  # 3 submitit jobs, each a fresh interpreter
def test_submitit_local_backend_runs_a_grid(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "sub"
    grid = [*SMOKE[:-1], "bench.methods={ft: {epochs: 1, lr: 0.01}}"]
    args = ["bench", *grid, "--out", str(out), "--no-progress", "--executor", "local"]
    assert main([*args, "--jobs", "2"]) == 0
    runs = sorted(p.parent.name for p in out.glob("*/seed*/*/metrics.json"))
    # every bench grid has the Retrain' noise floor (retrain_prime) since issue 10
    assert runs == ["ft", "original", "retrain", "retrain_prime"]
    assert (out / "submitit").is_dir()  # the jobs really went through submitit
    assert _trained(out) == ["original", "retrain", "retrain_prime"]
    report = json.loads((out / "report.json").read_text())
    assert report["runs"] == 4
