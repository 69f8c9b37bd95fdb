"""``salun train``: train the original model (or Retrain) on a split; its parser and handler."""

from __future__ import annotations

import argparse
from pathlib import Path
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
    """Add the ``train`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "train",
        "train the original model (or Retrain) on a split",
        "Draw (or read) the split, train the original model (--kind original) or Retrain, the "
        "model trained on the retain set only (--kind retrain), evaluate it and write "
        "model.safetensors (a DDPM: model/), split.json, config.yaml and metrics.json.",
        "salun train smoke/digits --out runs/orig",
    )
    _common(p)
    p.add_argument(
        "--kind",
        default="original",
        choices=["original", "retrain"],
        help="original: on the whole training split; retrain: on the retain set only "
        "(default original)",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from salun.config import save_config
    from salun.core.io import check_out, write_json  # lazy: salun --help stays torch-free
    from salun.run import check_finite_weights, prepare, run_folder, train_model, versions

    cfg = _config(args)
    check_out(args.out, args.overwrite, [args.split, *cfg.input_paths()])
    runs = _task(cfg.task).pipeline
    if runs is not None:
        runs.run_train(cfg, args.out)
    exp = prepare(cfg, args.split)
    with run_folder(args.out) as out:
        save_config(cfg, out / "config.yaml")
        exp.split.save(out / "split.json")
        model, info = train_model(exp, args.kind)
        check_finite_weights(model)
        target = Path(args.out) / exp.task.save_model(exp, model, out).relative_to(out)
        metrics = exp.task.evaluate(exp, model, out, args.kind)
        write_json(
            out / "metrics.json",
            {
                "kind": args.kind,
                "info": info,
                "metrics": metrics,
                "split_hash": exp.split.hash,
                "versions": versions(),
            },
        )
    fit_figure = (
        f"noise MSE {info['train_mse']:.4f}"
        if "train_mse" in info
        else f"train accuracy {info['train_acc']:.2f}%"
    )
    _print_cache(args.kind, info)
    print(f"{args.kind} model: {fit_figure}  -> {target}")
    if info.get("resumed"):
        print(f"trained in {info['seconds']:.2f}s{resumed_note(info['resumed'])}")
    _print_metrics("evaluation on the split:", metrics)
    return 0
