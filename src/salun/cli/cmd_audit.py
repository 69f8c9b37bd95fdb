"""``salun audit``: print a run's audit.json and verify its files; its parser and handler."""

from __future__ import annotations

import argparse
from typing import Any

from salun.cli.cli_options import _sub


def add_parser(sub: Any) -> None:
    """Add the ``audit`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "audit",
        "print a run's audit.json and verify every file's sha256",
        "Print what an unlearning run forgot, the models' hashes and metrics, and check every "
        "file of the run folder against the sha256 recorded in audit.json (exit 2 if one "
        "changed, is missing or was added).",
        "salun audit runs/salun",
    )
    p.add_argument("folder", help="an unlearning run folder (holds audit.json)")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from salun.core.audit import verify_audit

    r = verify_audit(args.folder)
    f = r["forgotten"]
    what = (
        f"class {f['forget_class']} ({f.get('forget_class_name')})"
        if f.get("forget_class") is not None
        else f"{f['count']} training images"
    )
    print(
        f"run {args.folder}: {r['method']} on {f['dataset']} ({f['scenario']}), created {r['created']}"
    )
    print(f"  forgotten: {what}; forget indices sha256 {f['indices_hash']}")
    print(f"  original model sha256 {r['original_model_hash']}")
    print(f"  result model sha256   {r['result_model_hash']}")
    for name, m in r.get("metrics", {}).items():
        print(f"  {name}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
    print(f"  versions: {', '.join(f'{k} {v}' for k, v in r.get('versions', {}).items())}")
    print(f"  {len(r['files'])} files verified (sha256 as recorded)")
    return 0
