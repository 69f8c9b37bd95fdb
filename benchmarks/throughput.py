"""Unlearning throughput per method (images/s), SalUn's time over Retrain's, mask time and memory.

Runs every registered method for a fixed number of epochs on one split (demo-fmnist preset by
default: Fashion-MNIST subset, small CNN; digits when Fashion-MNIST is missing) and prints a
table. Images/s counts every image a method passes forward and backward (D_f and/or D_r per
epoch). It asserts nothing; run it on an otherwise idle machine.
Usage: python benchmarks/throughput.py [--preset demo-fmnist] [--epochs 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import time

import torch

from salun.config import load_config
from salun.core.registry import METHODS
from salun.demos.classification_demo import fashion_mnist_available
from salun.methods import UnlearnData, get_method, list_methods
from salun.methods.saliency import compute_saliency_mask
from salun.run import prepare, train_model

IMAGES_PER_EPOCH = {  # which sets a method passes over in one epoch (default: D_r)
    "ga": ("forget",),
    "bs": ("forget",),
    "be": ("forget",),
    "rl": ("forget", "retain"),
    "salun": ("forget", "retain"),
    "salun_soft": ("forget", "retain"),
    "scrub": ("forget", "retain"),
    "bad_teacher": ("forget", "retain"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    preset = args.preset or ("demo-fmnist" if fashion_mnist_available() else "demo-digits")
    cfg = load_config(preset, ["progress=false", "cache_dir=runs/cache", *args.overrides])
    exp = prepare(cfg)
    original, _ = train_model(exp, "original")
    sizes = {"forget": len(exp.split.forget), "retain": len(exp.split.retain)}

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mask = compute_saliency_mask(copy.deepcopy(original), exp.forget, exp.task, cfg.mask.ratio)
    mask_s = time.perf_counter() - start
    mask_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024

    rows = []
    for name in list_methods():
        fields = {f.name for f in dataclasses.fields(METHODS.get(name))}
        method = get_method(name, **({"epochs": args.epochs} if "epochs" in fields else {}))
        model = copy.deepcopy(original)
        data = UnlearnData(exp.forget, exp.retain, cfg.seed)
        start = time.perf_counter()
        method.unlearn(model, data, exp.task, mask=mask if name == "salun" else None)
        seconds = time.perf_counter() - start
        trains = "epochs" in fields
        images = (args.epochs if trains else 1) * sum(
            sizes[s] for s in IMAGES_PER_EPOCH.get(name, ("retain",))
        )
        rows.append(
            (
                name if trains else f"{name} (no training)",
                seconds,
                images / seconds,
                getattr(method, "batch_size", "-"),
            )
        )

    times = {n: s for n, s, _, _ in rows}
    print(
        f"preset {preset}: {cfg.data.name}, model {cfg.model.name} (width {cfg.model.width}), "
        f"|D_f|={sizes['forget']}, |D_r|={sizes['retain']}, {args.epochs} epochs each, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| method | seconds | images/s | batch size |")
    print("|---|---:|---:|---:|")
    for name, seconds, ips, bs in rows:
        print(f"| {name} | {seconds:.2f} | {ips:.0f} | {bs} |")
    print(
        f"\nsaliency mask: {mask_s:.2f} s, peak RSS growth {mask_mb:.0f} MiB, "
        f"{mask.selected:,} of {mask.total:,} weights"
    )
    print(
        f"SalUn time / Retrain time at equal epochs: {(times['salun'] + mask_s) / times['retrain']:.3f} "
        "(SalUn including its mask)"
    )
    per_epoch = {n: t / args.epochs for n, t in times.items()}
    r_ep = cfg.retrain_recipe.epochs
    ratio = (5 * per_epoch["salun"] + mask_s) / (r_ep * per_epoch["retrain"])
    print(
        f"per epoch: SalUn {per_epoch['salun']:.2f} s, Retrain {per_epoch['retrain']:.2f} s; at the "
        f"presets' budgets (SalUn 5 epochs + mask, Retrain {r_ep} epochs): {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
