"""Execute one bench run folder (``config.yaml`` + ``run.json``) and write ``metrics.json``.

Invoked by the runner as ``python -m salun.bench.worker RUN_DIR``, one process per run, or
through :func:`job` by submitit (see :mod:`salun.bench.executors`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from salun.config import load_config
from salun.core.errors import SalunError
from salun.core.io import read_json, write_json
from salun.eval.classification import DEFINITIONS, EVAL_VERSION


def _record(folder: Path, line: str) -> None:
    """Append to the bench's executions log (one line per event, for audits and tests)."""
    with open(folder.parents[2] / "executions.log", "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def execute(folder: Path) -> dict[str, Any]:
    from salun.run import (
        evaluate,
        prepare,
        retrain_free_estimate,
        run_log,
        save_calibration,
        train_model,
        unlearn_once,
        versions,
    )

    spec = read_json(folder / "run.json", "run.json")
    cfg = load_config(str(folder / "config.yaml"))
    exp = prepare(cfg)
    _record(folder, f"start {spec['name']}")

    def model_of(kind: str):
        """Original or Retrain from the cache; a training is recorded in executions.log."""
        model, info = train_model(exp, kind)
        if not info["cache_hit"]:
            _record(folder, f"trained {kind} {info['cache_key']}")
        return model, info

    with run_log(folder):
        exp.split.save(folder / "split.json")
        original, orig_info = model_of("original")
        run: dict[str, Any]
        if spec["kind"] == "original":
            model, run = original, {"rte_seconds": 0.0, "mask_seconds": 0.0}
        elif spec["kind"] in ("retrain", "retrain_prime"):
            model, info = model_of(spec["kind"])
            run = {
                "rte_seconds": info["seconds"],  # every stretch of a resumed run
                "mask_seconds": 0.0,
                "resumed": int(info.get("resumed", 0)),
                "retrain": info,
            }
        else:
            from salun.run import method_uses_mask

            model, run = unlearn_once(
                exp, original, spec["method"], spec["params"], mask=method_uses_mask(cfg)
            )
            save_calibration(folder, run.pop("_calibration", None))
        metrics = evaluate(exp, model)
        estimate = retrain_free_estimate(exp, original, model)
        distance = None
        if spec["kind"] != "retrain":
            from salun.eval import compare_to_retrain

            distance = compare_to_retrain(model, model_of("retrain")[0])
        from salun.run import population_attacks

        name = {"original": "none", "retrain": "retrain", "retrain_prime": "retrain"}.get(
            spec["kind"], spec["method"]
        )
        attacks = population_attacks(
            exp, name, spec.get("params") or {}, run.get("mask") and True or None, original, model
        )
    result = {
        **{k: spec[k] for k in ("name", "scenario", "seed", "kind", "label", "method")},
        "params": spec.get("params", {}),
        "dataset": cfg.data.name,
        "split_hash": exp.split.hash,
        "original_train_acc": orig_info["train_acc"],
        "run": run,
        "metrics": {k: metrics[k] for k in ("UA", "MIA-Efficacy", "RA", "TA")},
        "extended": {
            k: metrics[k]
            for k in ("mia_family", "ZRF", "MIA-Efficacy (gamma=scale)")
            if k in metrics
        },
        "retrain_distance": distance,
        "retrain_free_estimate": estimate,
        **attacks,
        "evaluation": {k: metrics[k] for k in ("sizes", "mia", "evaluator")},
        "definitions": DEFINITIONS,
        "evaluator_version": EVAL_VERSION,
        "versions": versions(),
        "config_hash": spec.get("config_hash"),
    }
    write_json(folder / "metrics.json", result)
    _record(folder, f"done {spec['name']}")
    return result


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when the bench that started it dies (Linux
    PR_SET_PDEATHSIG), so killing only the bench never leaves a worker running."""
    parent = os.environ.get("SALUN_BENCH_PARENT")
    if parent is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the bench's handlers still stop workers
        pass
    if str(os.getppid()) != parent:  # the bench died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    from filelock import FileLock

    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0])
    from salun.core import runtime

    _die_with_parent()
    try:
        # resumable: a killed or preempted run continues from its checkpoints
        with FileLock(str(folder / ".run.lock")), runtime.session(folder, resume=True):
            runtime.configure(load_config(str(folder / "config.yaml")))
            execute(folder)
    except SalunError as e:
        write_json(folder / "error.json", {"error": str(e)})
        return 2
    except Exception as e:  # the sweep goes on; the report lists this run with its error
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        write_json(folder / "error.json", {"error": last.splitlines()[0]})
        traceback.print_exc()
        return 1
    return 0


def job(folder: str, record: str, token: str) -> None:
    """The submitit job (``--executor local`` / ``slurm``): run the folder, then write the exit
    record ``{"token", "returncode"}`` that the bench reads instead of submitit's result pickle."""
    code = main([folder])
    write_json(record, {"token": token, "returncode": code})


if __name__ == "__main__":
    sys.exit(main())
