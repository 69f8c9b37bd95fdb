"""``salun bench`` (a grid of methods x scenarios x seeds) and ``salun tune`` (hyperparameter
search on seeds never reported): their parsers and handlers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from salun.cli.cli_options import _config, _items, _no_progress, _sub
from salun.core.errors import SalunError


def add_parser(sub: Any) -> None:
    """Add the ``bench`` and ``tune`` subcommands to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "bench",
        "run a grid of methods x scenarios x seeds (resumable)",
        "Run every (scenario, seed, method) of a bench preset in its own process and folder, "
        "then write report.md, report.csv, report.json and plots. Re-running skips finished "
        "runs.",
        "salun bench digits-random10 --out runs/bench --jobs 2",
    )
    _items(p)
    p.add_argument("--out", required=True, help="bench folder (reruns skip finished runs)")
    p.add_argument("--cache", help="model cache shared across benches (default: OUT/cache)")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--executor",
        default="subprocess",
        choices=["subprocess", "local", "slurm"],
        help="subprocess: child processes here; slurm: submitit jobs; local: submitit locally",
    )
    p.add_argument(
        "--cluster-arg",
        action="append",
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. slurm_partition=gpu, gpus_per_node=1 (repeatable)",
    )
    _no_progress(p)
    p.set_defaults(func=cmd_bench)

    p = _sub(
        sub,
        "tune",
        "search method hyperparameters on seeds never reported",
        "Search the list-valued method parameters of a bench preset on tuning seeds, pick each "
        "method's setting by mean Avg. Gap to Retrain and write selected.yaml, a preset whose "
        "reporting seeds were never used for selection.",
        "salun tune fmnist-random10-search --seeds 100,101 --out runs/tune",
    )
    _items(p)
    p.add_argument(
        "--out", required=True, help="tuning folder: trial runs and selected.yaml (the preset)"
    )
    p.add_argument("--seeds", help="tuning seeds, comma-separated (default 100)")
    p.add_argument(
        "--search",
        default="grid",
        choices=["grid", "random"],
        help="grid: every combination; random: --budget draws (default grid)",
    )
    p.add_argument("--budget", type=int, help="most candidates per method")
    p.add_argument("--cache", help="model cache (default: OUT/cache)")
    _no_progress(p)
    p.set_defaults(func=cmd_tune)


def cmd_bench(args: argparse.Namespace) -> int:
    from salun.bench import build_report, run_bench
    from salun.bench.runner import check_timeout
    from salun.config import read_yaml
    from salun.config.yaml_reader import quoted

    check_timeout(args.timeout)
    cluster_args = {}
    for item in args.cluster_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SalunError(f"--cluster-arg must be KEY=VALUE, got {item!r}")
        cluster_args[key] = read_yaml(value, f"--cluster-arg {quoted(item)}")
    cfg = _config(args)
    counts = run_bench(
        cfg,
        args.out,
        cache_dir=args.cache,
        progress=not args.no_progress,
        timeout=args.timeout,
        jobs=args.jobs,
        executor=args.executor,
        cluster_args=cluster_args,
    )
    print(
        f"bench {args.out}: {counts['done']} run, {counts['skipped']} already done, "
        f"{counts['failed']} failed"
    )
    report = build_report(args.out)
    print(f"report: {Path(args.out) / 'report.md'} ({report['runs']} runs)")
    return 0 if counts["failed"] == 0 else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from salun.bench.tune import parse_seeds, run_tune

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    cfg = _config(args)
    result = run_tune(
        cfg,
        args.out,
        seeds=seeds,
        search=args.search,
        budget=args.budget,
        cache_dir=args.cache,
        progress=not args.no_progress,
    )
    print(f"tuned on seeds {result['tuning_seeds']} ({result['search']} search):")
    for label, trials in result["trials"].items():
        best = trials[0]
        print(
            f"  {label}: {best['params']}  Avg. Gap {best['avg_gap']:.2f} (best of {len(trials)})"
        )
    print(f"selected preset: {Path(args.out) / 'selected.yaml'}")
    return 0
