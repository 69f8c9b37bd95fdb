"""``salun demo``: the demo of a registered task; its parser and handler."""

from __future__ import annotations

import argparse
from typing import Any

from salun.cli.cli_options import _no_progress, _sub, _task


def add_parser(sub: Any) -> None:
    """Add the ``demo`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "demo",
        "the Fashion-MNIST demo (random 10%% and class-wise); --task ddpm: DDPM",
        "Train the original model and Retrain, run FT, GA, RL, l1-sparse and SalUn and print a "
        "table per scenario: random 10 %% forgetting and class-wise forgetting on Fashion-MNIST "
        "(class-wise on scikit-learn's digits without Fashion-MNIST). --task ddpm erases a digit "
        "from a class-conditional DDPM; --task text_to_image from a tiny Stable Diffusion "
        "pipeline.",
        "salun demo --seed 1 --out runs/demo-s1\nsalun demo --task ddpm --retrain",
    )
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides of the demo preset")
    p.add_argument(
        "--out",
        default="runs/demo",
        help="demo folder, one subfolder per scenario (default runs/demo; runs/demo-ddpm and "
        "runs/demo-sd for the other tasks)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (replacing its scenario folders, or the demo folder)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data subset, split, initialisation and methods (default 0)",
    )
    p.add_argument(
        "--dataset",
        default="auto",
        choices=["auto", "fashion-mnist", "digits"],
        help="auto: Fashion-MNIST when installed, else digits (default auto)",
    )
    p.add_argument(
        "--task",
        default="classification",
        help="a registered task (salun list tasks; default classification)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="ddpm: also train Retrain (slower); classification: re-train the cached original, "
        "Retrain and Retrain' instead of loading them",
    )
    _no_progress(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib
    import inspect

    task = _task(args.task)
    module, name = task.demo.split(":")
    run = getattr(importlib.import_module(module), name)
    out = args.out if args.out != "runs/demo" else task.demo_out
    from salun.core.io import check_out

    check_out(out, args.overwrite)  # the demos check their config's folders as well
    offered = {
        "overwrite": args.overwrite,
        "seed": args.seed,
        "dataset": args.dataset,
        "progress": not args.no_progress,
        "overrides": args.items,
        "retrain": args.retrain,
        "say": lambda line: print(line, flush=True),
    }
    accepted = inspect.signature(run).parameters
    if "retrain" not in accepted:  # a demo without its own meaning of --retrain: refresh caches
        from salun.experiment import set_refresh

        set_refresh(args.retrain)
    r = run(out, **{k: v for k, v in offered.items() if k in accepted})
    for one in r if isinstance(r, list) else [r]:
        print(f"\n## {one['title']}\n")
        print(one["table"])
    print(f"\n{task.demo_files} under {out}")
    return 0
