"""``salun eval``: evaluate a model on a split; its parser and handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from salun.cli.cli_options import _common, _config, _load, _print_metrics, _sub, _task


def add_parser(sub: Any) -> None:
    """Add the ``eval`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "eval",
        "evaluate a model on a split (UA, MIA-Efficacy, RA, TA)",
        "Evaluate a checkpoint on the split of the config (or --split): UA, MIA-Efficacy, RA and "
        "TA for classifiers; UA by a judge, other-class accuracy and FID for DDPMs.",
        "salun eval smoke/digits --model runs/salun/model.safetensors "
        "--split runs/salun/split.json",
    )
    _common(p, out=False)
    p.add_argument("--model", required=True, help="model (safetensors, or a DDPM folder)")
    p.add_argument("--out", help="folder for eval.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from salun.core.io import check_out, write_json
    from salun.run import evaluate, prepare

    cfg = _config(args)
    if args.out is not None:  # eval.json is written into it: the folder is not replaced
        inputs = [args.model, args.split, *cfg.input_paths()]
        check_out(args.out, inputs=inputs, replaces=False)
    runs = _task(cfg.task).pipeline
    if runs is not None:
        runs.run_eval(cfg)
    exp = prepare(cfg, args.split)
    model = _load(exp, args.model)
    metrics = evaluate(exp, model)
    if args.out:
        write_json(
            Path(args.out) / "eval.json",
            {"checkpoint": args.model, "metrics": metrics, "split_hash": exp.split.hash},
        )
    if args.json:
        keys = exp.task.headline
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
    else:
        _print_metrics(f"{args.model}:", metrics)
    return 0
