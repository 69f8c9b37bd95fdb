"""``salun unlearn``: run one unlearning method and evaluate it; its parser and handler."""

from __future__ import annotations

import argparse
from typing import Any

from salun.cli.cli_options import (
    _common,
    _config,
    _print_cache,
    _print_metrics,
    _sub,
    _task,
    resumed_note,
)


def add_parser(sub: Any) -> None:
    """Add the ``unlearn`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "unlearn",
        "run one unlearning method and evaluate it",
        "Run unlearn.method (salun list methods) on the original model, evaluate UA, "
        "MIA-Efficacy, RA and TA and compare with Retrain and the original (Avg. Gap); writes "
        "the model, metrics.json, audit.json and log.txt into --out.",
        "salun unlearn smoke/digits unlearn.method=rl unlearn.params.lr=0.01 --out runs/rl",
    )
    _common(p)
    p.add_argument("--model", help="original model (safetensors); default: train or cache")
    p.add_argument("--mask", help="saliency mask (safetensors); default: computed when used")
    p.add_argument("--no-compare", action="store_true", help="skip original/Retrain metrics")
    p.add_argument(
        "--force", action="store_true", help="use a --mask recorded for another model anyway"
    )
    p.set_defaults(func=cmd_unlearn)


def cmd_unlearn(args: argparse.Namespace) -> int:
    from salun.run import run_unlearn

    cfg = _config(args)
    r = run_unlearn(
        cfg,
        args.out,
        args.model,
        args.mask,
        args.split,
        compare=not args.no_compare,
        overwrite=args.overwrite,
        force=args.force,
    )
    runs = _task(cfg.task).pipeline
    if runs is not None:
        print("\n".join(runs.unlearn_lines(cfg, r, args.out)))
        return 0
    _print_cache("original", r["original"]["info"])
    if "retrain" in r:
        _print_cache("retrain", r["retrain"]["info"])
    print(
        f"{cfg.unlearn.method} on {cfg.data.name} ({cfg.data.scenario}), seed {cfg.seed}: "
        f"RTE {r['run']['rte_seconds']:.2f}s{resumed_note(r['run'].get('resumed'))}"
    )
    _print_metrics("unlearned:", r["metrics"])
    if "retrain" in r:
        _print_metrics("retrain:", r["retrain"]["metrics"])
        gap = r["gap"]["Avg. Gap"]
        print(f"Avg. Gap to Retrain: {gap:.2f}")
        if "noise_floor" in r:
            from salun.core.results import floor_note

            print(floor_note(r["noise_floor"]["floor"], gap))
    cal = r["run"].get("calibration")
    if cal and "skipped" not in cal:
        print(
            f"calibration ({cal['scenario']}): lr {cal['lr']:.3g}, epoch {cal['epoch']}, "
            f"estimated Avg. Gap {cal['estimate']:.2f} -> calibration.json, calibration.png"
        )
        if cal.get("no_safe_step"):
            print(
                "WARNING: no safe step: every lr and epoch tried moved the model further from "
                "Retrain (by the Retrain-free estimate) than the original; the original was "
                "returned unchanged. Try FT or l1-sparse, or a smaller lr."
            )
    print(f"run folder: {args.out}")
    return 0
