"""Helpers the command modules share: the preset/override items and the common options of
a subcommand, the resolved config and task, a model from a path, and the printed cache and
metric lines."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from salun.core.errors import SalunError


def _split_items(items: Sequence[str]) -> tuple[str | None, list[str]]:
    preset, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise SalunError(f"two presets given ({preset!r}, {item!r}); give one, then key=value")
    return preset, overrides


def _config(args: argparse.Namespace):
    from salun.config import load_config

    preset, overrides = _split_items(args.items)
    task = getattr(args, "task", None)
    if task is not None:
        if preset is None:
            preset = _task(task).default_preset  # e.g. ddpm: digits 16x16, small UNet
        overrides.insert(0, f"task={task}")
    from salun.core import distributed, runtime
    from salun.experiment import set_refresh

    # --retrain: re-train cached models and replace their cache entries (this command only)
    set_refresh(bool(getattr(args, "retrain", False)))

    if getattr(args, "no_progress", False) or not distributed.is_main():
        overrides.append("progress=false")  # under torchrun only rank 0 shows progress
    cfg = load_config(preset, overrides)
    runtime.configure(cfg)  # precision, compile, determinism, checkpoint_every for the loops
    return cfg


def _task(name: str):
    """The registered task ``name`` (one-line error naming the registered ones)."""
    from salun.core.registry import TASKS

    return TASKS.get(name)


def _print_cache(kind: str, info: dict[str, Any]) -> None:
    from salun.experiment import cache_note

    note = cache_note(kind, info)
    if note:
        print(note)


def resumed_note(resumed: Any) -> str:
    """`` (resumed N times: total over N + 1 stretches)`` for a resumed run, else ""."""
    if not isinstance(resumed, int | float) or resumed < 1:
        return ""
    n = int(resumed)
    return f" (resumed {n} time{'s' if n > 1 else ''}: total over {n + 1} stretches)"


def _print_metrics(title: str, m: dict[str, Any]) -> None:
    if "other_acc" in m:  # generator: UA by the judge, other-class accuracy, FID
        print(title)
        fid = f"  FID ({m.get('fid_features')}) {m['FID']:.2f}" if "FID" in m else ""
        print(f"  UA {m['UA']:.2f}  other-class acc {m['other_acc']:.2f}{fid}")
        return
    keys = ("UA", "MIA-Efficacy", "RA", "TA")
    print(title)
    print("  " + "  ".join(f"{k} {m[k]:.2f}" for k in keys))


def _load(exp, path: str):
    """A model for ``exp`` from ``path`` (safetensors, or a diffusers folder for DDPMs)."""
    return exp.task.load_model(exp, path)


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    _items(p)
    p.add_argument("--split", help="use this split.json instead of drawing one")
    _task_option(p)
    p.add_argument(
        "--retrain",
        action="store_true",
        help="re-train cached models (original, Retrain, judge) and replace their cache entries",
    )
    _no_progress(p)
    if out:
        p.add_argument("--out", required=True, help="run folder (new or empty)")
        p.add_argument(
            "--overwrite", action="store_true", help="replace a non-empty --out (atomically)"
        )
        p.add_argument(
            "--resume", action="store_true", help="continue a killed run from its checkpoints"
        )


def _items(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        nargs="*",
        metavar="PRESET|key=value",
        help="a preset name (salun list presets) or YAML file, then overrides such as "
        "unlearn.method=ga",
    )


def _task_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--task",
        default=default,
        help="a registered task (salun list tasks): model family (ddpm: class-conditional diffusion, default preset demo-ddpm; "
        "text_to_image: Stable Diffusion, default preset demo-sd)"
        + (f"; default {default}" if default else ""),
    )


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _sub(sub: Any, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand with a one-line help, a description and an example (shown by --help)."""
    return sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, 88),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
