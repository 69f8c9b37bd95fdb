"""``salun report``: tables and plots from a bench or demo folder; its parser and handler."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from salun.cli.cli_options import _sub


def add_parser(sub: Any) -> None:
    """Add the ``report`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "report",
        "tables and plots from a bench or demo folder",
        "Recompute the tables from the run folders' metrics.json and print them. A bench "
        "folder: report.md, report.csv, report.json and plots are written into it. A demo folder "
        "(salun demo --out DIR): its scenarios' tables again. Several demo folders (one per "
        "seed): one table per scenario with mean ± std over the seeds.",
        "salun report runs/fmnist-random10\n"
        "salun report runs/demo-s0 runs/demo-s1 runs/demo-s2   # mean ± std over 3 seeds",
    )
    p.add_argument(
        "folders",
        nargs="+",
        metavar="FOLDER",
        help="a bench folder, or one or more demo folders (combined: mean ± std over seeds)",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from salun.core.results import demo_report, is_demo_folder

    folders = [Path(f) for f in args.folders]
    if len(folders) > 1 or is_demo_folder(folders[0]):
        print(demo_report(folders), end="")
        return 0
    from salun.bench import build_report

    build_report(folders[0], plots=not args.no_plots)
    print((folders[0] / "report.md").read_text(encoding="utf-8"), end="")
    return 0
