"""``salun sample``: sample a class-conditional DDPM folder into a PNG grid; its parser,
handler and the helpers that name and save the samples."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from salun.cli.cli_options import _no_progress, _sub
from salun.core.errors import SalunError


def add_parser(sub: Any) -> None:
    """Add the ``sample`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "sample",
        "sample a class-conditional DDPM folder into a PNG grid",
        "Draw --n samples per class from a DDPM model folder with classifier-free guidance; "
        "writes grid_<method>.png (one row per class; the method that made the model, or "
        "model) and samples.safetensors.",
        "salun sample --model runs/ddpm/model --classes 0,1 --n 8 --out runs/samples",
    )
    p.add_argument("--model", required=True, help="DDPM folder (unet/, scheduler/, salun.json)")
    p.add_argument(
        "--out", required=True, help="folder for grid_<method>.png and samples.safetensors"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--classes", help="comma-separated class indices (default: all)")
    p.add_argument("--n", type=int, default=8, help="samples per class (default 8)")
    p.add_argument("--guidance", type=float, help="CFG weight w (default: the model's)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument(
        "--sampler",
        default="ddim",
        help="ddim (deterministic, eta = 0) or ddpm (stochastic); default ddim",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sampling seed: same seed, same images (default 0)"
    )
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="allow more than 1,000,000 denoising passes (--n x classes x --steps)",
    )
    _no_progress(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from salun.core.io import check_out, staged_folder  # lazy: salun --help stays torch-free
    from salun.core.limits import MAX_SEED
    from salun.eval.generation import check_sampling, sample
    from salun.tasks.ddpm.ddpm_folders import load_ddpm

    check_out(args.out, args.overwrite, [args.model])
    if not math.isfinite(args.guidance if args.guidance is not None else 0.0):
        raise SalunError(f"--guidance must be a finite number, got {args.guidance}")
    if args.steps < 1:
        raise SalunError(f"--steps must be >= 1, got {args.steps}")
    if not 0 <= args.seed <= MAX_SEED:
        raise SalunError(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    if args.n < 1:
        raise SalunError(f"--n must be >= 1, got {args.n}")
    unet, scheduler, meta = load_ddpm(args.model)
    k = int(meta.get("num_classes", unet.config.num_class_embeds - 1))
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise SalunError(
                f"--classes must be comma-separated integers, got {args.classes!r}"
            ) from None
        bad = [c for c in classes if not 0 <= c < k]
        if bad:
            raise SalunError(f"class {bad[0]} out of range; allowed: 0..{k - 1}")
    else:
        classes = list(range(k))
    check_sampling(scheduler, args.steps, args.seed, steps_name="--steps")
    _check_size(args, len(classes))
    labels = torch.tensor(classes).repeat_interleave(args.n)
    w = meta.get("guidance", 2.0) if args.guidance is None else args.guidance
    images = sample(
        unet,
        labels,
        scheduler,
        int(meta.get("null_label", k)),
        guidance=w,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if not bool(images.isfinite().all()):
        raise SalunError(f"model {args.model!r} produced non-finite samples (NaN or inf)")
    with staged_folder(args.out) as out:
        _save_samples(out, images, labels, w, args)
    print(f"{len(labels)} samples (classes {classes}, w={w}, {args.sampler} {args.steps} steps)")
    grid = Path(args.out) / f"grid_{_model_name(args.model)}.png"
    print(f"grid: {grid}  tensors: {Path(args.out) / 'samples.safetensors'}")
    return 0


def _check_size(args: argparse.Namespace, n_classes: int) -> None:
    """Refuse a request over MAX_SAMPLE_PASSES denoising passes unless --allow-large: a
    mistyped --n otherwise starts a job of hours without a word about its size."""
    from salun.eval.generation import MAX_SAMPLE_PASSES

    passes = args.n * n_classes * args.steps
    if passes > MAX_SAMPLE_PASSES and not args.allow_large:
        raise SalunError(
            f"--n {args.n} x {n_classes} classes x --steps {args.steps} = {passes:,} denoising "
            f"passes, over the limit of {MAX_SAMPLE_PASSES:,}; lower --n or --steps, or pass "
            "--allow-large"
        )


def _model_name(model: str) -> str:
    """The method (or kind) that made a DDPM folder, from its run folder's metrics.json; grids
    are named grid_<method>.png everywhere."""
    from salun.core.io import read_json

    try:  # SalunError (a ValueError): missing, unreadable or not JSON
        m = read_json(Path(model).parent / "metrics.json", "metrics.json")
        name = str(m.get("method") or m.get("kind") or "model")
    except (OSError, ValueError, AttributeError):
        return "model"
    return name if name.replace("_", "").isalnum() else "model"


def _save_samples(out: Path, images, labels, w: float, args: argparse.Namespace) -> None:
    from salun.core.catalog import display_name
    from salun.core.io import save_tensors
    from salun.eval.generation import save_grid

    name = _model_name(args.model)
    save_grid(
        images,
        labels,
        out / f"grid_{name}.png",
        per_row=min(args.n, 16),
        title=f"{display_name(name)}: w={w}, {args.sampler} {args.steps} steps, seed {args.seed}",
    )
    save_tensors(
        out / "samples.safetensors",
        {"images": images.contiguous(), "labels": labels},
        {
            "guidance": str(w),
            "steps": str(args.steps),
            "sampler": args.sampler,
            "seed": str(args.seed),
            "model": str(args.model),
        },
    )
