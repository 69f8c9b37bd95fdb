"""``salun list`` (the names a config accepts; imports no torch) and ``salun config`` (the
resolved config): their parsers and handlers."""

from __future__ import annotations

import argparse
from typing import Any

from salun.cli.cli_options import _config, _items, _sub, _task_option
from salun.core.errors import SalunError

LISTS = (
    "methods",
    "tasks",
    "ddpm-methods",
    "text_to_image-methods",
    "models",
    "datasets",
    "presets",
)


def add_parser(sub: Any) -> None:
    """Add the ``list`` and ``config`` subcommands to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "list",
        "list methods, models, datasets or presets",
        "Print the names a config accepts. Nothing is imported beyond a static table, so this "
        "answers at once.",
        "salun list ddpm-methods\nsalun list methods --long   # display names, tasks, "
        "hyperparameters",
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        metavar="WHAT",
        help=f"one of: all (default), {', '.join(LISTS)}",
    )
    p.add_argument(
        "--long",
        "-l",
        action="store_true",
        help="methods: also display name, tasks and hyperparameter names",
    )
    p.set_defaults(func=cmd_list)

    p = _sub(
        sub,
        "config",
        "print the resolved config",
        "Resolve a preset (or YAML file) and key=value overrides, check them and print the "
        "resulting config as YAML (the config.yaml a run would save). Sections for another "
        "task (diffusion, text_to_image) are left out.",
        "salun config smoke/digits unlearn.method=ga\nsalun config --task ddpm",
    )
    _items(p)
    _task_option(p)
    p.set_defaults(func=cmd_config)


def cmd_list(args: argparse.Namespace) -> int:
    from salun.config import preset_names
    from salun.core import catalog  # a static table: salun list imports no torch

    tables = {"methods": catalog.method_names(), "tasks": list(catalog.TASKS)}
    for task in catalog.TASKS:
        tables[f"{task}-methods"] = catalog.method_names(task)
    tables.update(
        models=list(catalog.MODELS), datasets=list(catalog.DATASETS), presets=preset_names()
    )
    if args.what != "all" and args.what not in tables:
        raise SalunError(f"unknown list {args.what!r}; allowed: all, {', '.join(tables)}")
    if args.long and args.what in ("all", "methods", "ddpm-methods", "text_to_image-methods"):
        names = tables["methods" if args.what == "all" else args.what]
        for name in names:
            shown, tasks, params = catalog.METHODS[name]
            print(f"{name:<13} {shown:<11} tasks: {','.join(tasks)}")
            print(f"{'':<13} hyperparameters: {' '.join(params)}")
        return 0
    for name, values in tables.items():
        if args.what in ("all", name):
            print(f"{name}: {' '.join(values)}" if args.what == "all" else "\n".join(values))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    tree = _config(args).to_dict()
    from salun.core.registry import TASKS

    sections = {n: getattr(TASKS.get(n), "config_section", None) for n in TASKS.names()}
    used = sections.get(tree["task"])
    for section in set(sections.values()) - {None, used}:
        tree.pop(section, None)  # another task's settings: this config does not use them
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0
