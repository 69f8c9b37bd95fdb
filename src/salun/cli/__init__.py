"""Command line: ``salun train | mask | unlearn | eval | sample | bench | tune | report | list |
config | demo``. ``--task ddpm`` switches train/mask/unlearn/eval/demo to class-conditional DDPMs.

Bad input exits with code 2 and one line on stderr; a run folder this command created is
removed again when it fails, so no partial results are left behind. Anything else that goes
wrong (a bug the checks missed) is one line too, "salun: internal error: ...", exit 1; the
traceback is printed only with ``--debug`` (or ``SALUN_DEBUG=1``).

This package holds the entry point (``main``, ``build_parser``, the error handling); each
command group's parser and handler live side by side in a ``cmd_*`` module, the options they
share in ``cli_options``. Handlers import torch and the pipeline lazily, so ``salun --help``
and ``salun list`` stay torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from salun.cli import (
    cmd_audit,
    cmd_bench,
    cmd_demo,
    cmd_eval,
    cmd_info,
    cmd_mask,
    cmd_report,
    cmd_sample,
    cmd_train,
    cmd_unlearn,
)
from salun.cli.cli_options import _split_items
from salun.core.errors import SalunError

__all__ = ["build_parser", "main", "_split_items"]

# One registration per command module, in the order `salun --help` lists the commands.
_COMMANDS = (
    cmd_train,
    cmd_mask,
    cmd_unlearn,
    cmd_eval,
    cmd_sample,
    cmd_bench,  # bench, tune
    cmd_audit,
    cmd_report,
    cmd_info,  # list, config
    cmd_demo,
)


#: Commands whose --out folder is replaced as a whole (staged, renamed onto it): one run at a
#: time may write it (salun.core.io.out_lock).
_REPLACES_OUT = ("train", "mask", "unlearn", "sample", "demo")

_DESCRIPTION = (
    "Machine unlearning with SalUn (Fan et al., ICLR 2024) and its baselines: train a model, "
    "make it forget a set of training images or a class, and measure how close it gets to "
    "retraining from scratch. --task ddpm (or text_to_image) switches train, mask, unlearn, eval "
    "and demo to class-conditional diffusion models (or Stable Diffusion)."
)

_EPILOG = """\
examples:
  salun demo --out runs/demo                      the Fashion-MNIST demo (two scenarios)
  salun unlearn smoke/digits --out runs/salun     one method, compared with Retrain
  salun list                                      methods, models, datasets, presets
  salun COMMAND --help                            options and an example of one command

Bad input exits with code 2 and one line on stderr; a run folder the command created is removed
again when it fails, so no partial results are left behind. An internal error (a bug) exits 1
with one line; --debug (or SALUN_DEBUG=1) prints its traceback as well.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salun",
        description=textwrap.fill(_DESCRIPTION, 88),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to stderr (anywhere on the line)"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an internal error (anywhere on the line; or SALUN_DEBUG=1)",
    )
    from salun import __version__

    parser.add_argument(
        "--version", action="version", version=f"salun {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )

    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


#: flags that work anywhere on the line (before or after the subcommand)
_ANYWHERE = ("-v", "--verbose", "--debug")
_INTERRUPTED = "salun: interrupted; no result was written for this command"
_INTERNAL_MAX = 200  # characters of an internal error's message on its one line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SALUN_DEBUG", "").strip() not in ("", "0")
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the command started (its own handler is in _run)
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: a bug the checks missed, never bad input
        if debug:
            traceback.print_exc()
        print(_internal_line(e), file=sys.stderr)
        return 1


def _internal_line(e: BaseException) -> str:
    """``salun: internal error: Type: first line of the message; run with --debug ...``."""
    lines = str(e).strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    if len(first) > _INTERNAL_MAX:
        first = first[: _INTERNAL_MAX - 3] + "..."
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return f"salun: internal error: {what}; run with --debug for the traceback"


def _main(argv: list[str]) -> int:
    parser = build_parser()
    verbose = any(a in ("-v", "--verbose") for a in argv)
    args, extra = parser.parse_known_args([a for a in argv if a not in _ANYWHERE])
    args.verbose = verbose
    # key=value items may come after options (argparse stops collecting positionals there).
    bad = [e for e in extra if e.startswith("-") or not hasattr(args, "items")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.items = [*args.items, *extra]
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("salun").setLevel(logging.INFO)
    out: str | None = getattr(args, "out", None)
    # A folder this command created is removed when the command fails (bad input or a bug); bench folders are kept
    # (they are resumable), and so are folders of crashed runs (their log helps). Staged run
    # folders (train, mask, unlearn, sample) appear only complete: one found after a failure is
    # another run's result, never removed.
    fresh = out is not None and args.command in ("demo", "eval") and not Path(out).exists()
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command == "list":  # torch-free: no process group, no runtime session
        try:
            return func(args)
        except SalunError as e:
            print(f"salun: error: {_one_line(e)}", file=sys.stderr)
            return 2
        finally:
            logging.getLogger().removeHandler(handler)
    from salun.core import distributed

    # under torchrun: one process group; rank 0 prints and writes, the others compute
    started = distributed.init_from_env()
    main_rank = distributed.is_main()
    if not main_rank:
        logging.getLogger("salun").setLevel(logging.WARNING)
    folder = out if args.command in ("train", "mask", "unlearn") else None
    try:
        if out is None or args.command not in _REPLACES_OUT:
            return _run(func, args, out, fresh, folder, main_rank)
        from salun.core.io import out_lock

        try:  # held for the whole command: its checkpoints and its run folder
            lock = out_lock(out, create=False)
            lock.__enter__()
        except SalunError as e:
            print(f"salun: error: {_one_line(e)}", file=sys.stderr)
            return 2
        try:
            return _run(func, args, out, fresh, folder, main_rank)
        finally:
            lock.__exit__(None, None, None)
    finally:
        logging.getLogger().removeHandler(handler)  # main() may run many times in one process
        if started:
            distributed.shutdown()


def _run(
    func: Callable[[argparse.Namespace], int],
    args,
    out: str | None,
    fresh: bool,
    folder: str | None,
    main_rank: bool,
) -> int:
    from salun.core import runtime

    try:
        quiet = sys.stdout if main_rank else open(os.devnull, "w")  # noqa: SIM115
        resume = getattr(args, "resume", False)
        with contextlib.redirect_stdout(quiet), runtime.session(folder, resume=resume):
            return func(args)
    except KeyboardInterrupt:
        if fresh and out and main_rank:
            shutil.rmtree(out, ignore_errors=True)
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as e:
        line = (
            _one_line(e)
            if isinstance(e, SalunError | OSError | MemoryError | RuntimeError)
            else None
        )
        if fresh and out and main_rank:
            shutil.rmtree(out, ignore_errors=True)
        if line is None:
            raise  # a bug, not bad input: main's last resort prints one line and exits 1
        print(f"salun: error: {line}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str | None:
    """The one-line message for bad input or a failing machine; None for anything else."""
    if isinstance(e, SalunError):
        return " ".join(str(e).split())
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        if e.errno == errno.ENOSPC:
            return f"no space left on device{where}; free some space and run again"
        return f"{e.strerror or e}{where}"
    if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e):
        return "out of memory; use a smaller data.image_size, batch size or model"
    return None
