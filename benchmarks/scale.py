"""Scale-out figures: training images/s on 1 and 2 ranks (torchrun) and bench wall time per --jobs.

CPU (default): ranks use gloo, one thread each; the bench runs digits-random10 (one seed).
``--device cuda``: one rank with NCCL on the GPU (ResNet-18, bf16 by default), and the bench on
the GPU with --jobs 1 and 2. Figures are measured here, on whatever machine runs this; they are
labelled with the device. It asserts nothing; run it on an otherwise idle machine.
Usage: python benchmarks/scale.py [--device cpu|cuda] [--epochs 3] [--ranks 1,2] [--jobs 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One rank: train a model with ``fit`` (DDP when WORLD_SIZE > 1) and report images/s."""
    import torch

    from salun.config import load_config
    from salun.core import distributed, runtime
    from salun.methods._fit import fit
    from salun.run import prepare, recipe_optim, reseed

    distributed.init_from_env(args.device)
    if args.device == "cpu":
        torch.set_num_threads(1)
    items = [
        f"device={args.device}",
        "progress=false",
        f"model.name={args.model}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        f"runtime.precision={args.precision}",
        f"runtime.compile={args.compile}",
    ]
    if args.model != "cnn":
        items.append("data.image_size=32")
    cfg = load_config("smoke/digits", [*items, "data.train_subset=null"])
    with runtime.session(None):
        runtime.configure(cfg)
        exp = prepare(cfg)
        exp.task.device = distributed.local_device(exp.task.device)
        model = exp.new_model().to(exp.task.device)
        reseed(exp, 0)
        loader = exp.task.loader(exp.train, cfg.train.batch_size, True, 0)
        warm = recipe_optim(cfg.train)
        warm.epochs = 1
        fit(model, lambda e: [(loader, exp.task.loss)], warm, None, False, "warm-up")
        if exp.task.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fit(model, lambda e: [(loader, exp.task.loss)], recipe_optim(cfg.train), None, False)
        if exp.task.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    images = len(exp.train) * cfg.train.epochs  # global images, all ranks together
    if distributed.is_main():
        print(json.dumps({"images": images, "seconds": seconds}), flush=True)
    distributed.shutdown()


def ranks_figure(args: argparse.Namespace, n: int) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    flags = [
        "--worker",
        f"--device={args.device}",
        f"--epochs={args.epochs}",
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--precision={args.precision}",
        f"--compile={args.compile}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, str(n), __file__, *flags], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"torchrun with {n} ranks failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    r = json.loads(line)
    return r["images"] / r["seconds"]


def bench_figure(args: argparse.Namespace, jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "salun", "bench", "digits-random10", "bench.seeds=[0]"]
        cmd += [f"device={args.device}", "--out", str(Path(tmp) / "b"), "--no-progress"]
        if args.device == "cpu":
            cmd.append("threads=1")
        start = time.perf_counter()
        proc = subprocess.run([*cmd, "--jobs", str(jobs)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"bench --jobs {jobs} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default=None, help="default: cnn on CPU, resnet18 on CUDA")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default=None, help="fp32|bf16|fp16 (default fp32 CPU, bf16 GPU)")
    ap.add_argument("--compile", default="false", choices=["true", "false"])
    ap.add_argument("--ranks", default=None, help="comma-separated (default 1,2 CPU; 1 CUDA)")
    ap.add_argument("--jobs", default="1,2", help="bench --jobs values, comma-separated")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.model = args.model or ("resnet18" if gpu else "cnn")
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if args.worker:
        worker(args)
        return
    ranks = [int(x) for x in (args.ranks or ("1" if gpu else "1,2")).split(",")]
    label = "GPU" if gpu else f"CPU ({os.cpu_count()} cores)"
    backend = "nccl" if gpu else "gloo"
    print(f"## Scale-out on {label}: {args.model}, {args.precision}, digits, {args.epochs} epochs")
    print("\n| ranks | backend | train images/s |\n|---|---|---|")
    for n in ranks:
        print(f"| {n} | {backend} | {ranks_figure(args, n):.0f} |", flush=True)
    print("\n| bench digits-random10 (1 seed, 5 runs) | wall time (s) |\n|---|---|")
    for j in [int(x) for x in args.jobs.split(",")]:
        print(f"| --jobs {j} | {bench_figure(args, j):.1f} |", flush=True)


if __name__ == "__main__":
    main()
