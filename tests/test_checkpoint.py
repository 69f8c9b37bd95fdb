"""Checkpoints: a run killed with SIGKILL at a random step resumes to bit-identical weights."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from salun.cli import main
from salun.config import load_config
from salun.core import runtime
from salun.core.io import load_tensors, read_metadata
from salun.methods import UnlearnData, get_method
from salun.run import prepare

ARGS = [
    "smoke/digits",
    "threads=1",
    "unlearn.params.batch_size=8",
    "unlearn.params.epochs=3",
    "runtime.checkpoint_every=1",
    "--no-progress",
    "--no-compare",
]


def _ckpt(folder: Path) -> Path:
    """Where a run's checkpoints live: beside the run folder, which is staged and renamed."""
    return folder.parent / f".{folder.name}.checkpoints"


def _step(folder: Path) -> int:
    """Step of the unlearning loop's checkpoint in ``folder`` (0 while there is none)."""
    for p in _ckpt(folder).glob("SalUn-*.safetensors"):
        try:
            return json.loads(read_metadata(p)["salun"])["position"]["step"]
        except Exception:  # replaced while reading: try again on the next poll
            return 0
    return 0


def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    full = tmp_path / "full"
    assert main(["unlearn", *ARGS, cache, "--out", str(full)]) == 0  # also caches the original
    assert not _ckpt(full).exists()  # removed once the run is complete

    # 540 retain + 60 forget images, batch 8: 75 steps an epoch, 225 in all
    kill_at = random.Random().randint(2, 200)
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "salun", "unlearn", *ARGS, cache, "--out", str(cut)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.time() + 120
    while proc.poll() is None and _step(cut) < kill_at and time.time() < end:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _step(cut)
    assert 0 < killed_at < 225, killed_at
    assert not (cut / "metrics.json").exists()

    assert main(["unlearn", *ARGS, cache, "--out", str(cut), "--resume"]) == 0
    # it did resume (a restart from scratch would also give equal weights)
    log = (cut / "log.txt").read_text()
    assert f"at step {killed_at} " in log and "resumed SalUn-" in log, log[-2000:]
    a = load_tensors(full / "model.safetensors")
    b = load_tensors(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming at step {killed_at}"
    ma = json.loads((full / "metrics.json").read_text())["metrics"]
    mb = json.loads((cut / "metrics.json").read_text())["metrics"]
    assert {k: ma[k] for k in ("UA", "RA", "TA")} == {k: mb[k] for k in ("UA", "RA", "TA")}


@pytest.mark.parametrize("method", ["neggrad_plus", "retrain"])
def test_resume_in_process_every_loop_shape(tmp_path, method, caplog):
    """Cycled forget loaders (NegGrad+) and training from scratch (Retrain) resume exactly."""
    cfg = load_config("smoke/digits", ["progress=false"])
    exp = prepare(cfg)
    params = {"epochs": 2, "batch_size": 32}
    data = UnlearnData(exp.forget, exp.retain, seed=0)

    def run(stop_after: int | None, resume: bool) -> None | torch.nn.Module:
        from salun.methods import _fit

        torch.manual_seed(0)
        model = exp.new_model(seed=0)
        module = sys.modules[type(get_method(method)).__module__]
        orig = _fit.fit

        def stop(step):
            if step == stop_after:
                raise KeyboardInterrupt  # a crash in the middle of the loop

        def fit_with_stop(*a, **k):
            return orig(*a, **{**k, "after_step": stop})

        module.fit = fit_with_stop  # type: ignore[attr-defined]
        try:
            with runtime.session(tmp_path / "run", resume=resume) as rt:
                rt.checkpoint_every, rt.task = 1, exp.task
                return get_method(method, **params).unlearn(model, data, exp.task)
        except KeyboardInterrupt:
            return None
        finally:
            module.fit = orig  # type: ignore[attr-defined]

    full = run(None, resume=False)
    assert run(7, resume=False) is None
    assert any(_ckpt(tmp_path / "run").glob("*.safetensors"))
    caplog.set_level("INFO", logger="salun.core.checkpoint")
    resumed = run(None, resume=True)
    assert "at step 6 " in caplog.text  # the step before the crash was the last checkpoint
    assert full is not None and resumed is not None
    for (n, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
