"""Wall time of the CLI's instant commands: ``salun --help`` and ``salun list``.

Each command runs in a fresh interpreter (``python -m salun``) ``--repeat`` times; the median,
minimum and maximum are printed, and whether the command imported torch (it should not: torch
alone takes 1-2 s to import). Goal: under 1 s each on a quiet machine.

    python benchmarks/cli_timing.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["list"], ["list", "methods", "--long"])
_PROBE = (
    "import runpy, sys; sys.argv = ['salun', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('salun', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'torch-free', file=sys.stderr)\n"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def time_command(args: list[str], repeat: int) -> tuple[list[float], bool]:
    times, torch_free = [], True
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "salun", *args], env=_env(), capture_output=True, check=True
        )
        times.append(time.perf_counter() - t0)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], env=_env(), capture_output=True, text=True
    )
    torch_free = "torch-free" in probe.stderr
    return times, torch_free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    a = ap.parse_args()
    print("| command | median (s) | min (s) | max (s) | imports torch |")
    print("|---|---:|---:|---:|---|")
    for args in COMMANDS:
        times, torch_free = time_command(args, a.repeat)
        print(
            f"| salun {' '.join(args)} | {statistics.median(times):.3f} | {min(times):.3f} "
            f"| {max(times):.3f} | {'no' if torch_free else 'YES'} |"
        )


if __name__ == "__main__":
    main()
