"""Time and peak memory of mask thresholding: salun vs the reference approach.

salun: k-th value via histogram + small kthvalue, bool masks (1 byte per weight), no sort.
reference approach (as in the SalUn authors' code): concatenate all |grad|, two global argsorts
(rank of every weight), int64 masks (8 bytes per weight).

Each (approach, size) runs in a fresh subprocess; peak memory is the growth of the process's
maximum resident set size over the baseline with the gradients already allocated.
Usage: python benchmarks/mask.py [--sizes resnet18,1e8,2e8,860e6] [--ratio 0.5]
Sizes whose reference run would not fit in the memory limit are skipped for the reference and
said so. Prints a Markdown table; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# Estimated reference footprint per weight: 4 (concat copy) + 8 + 8 (two int64 argsorts)
# + argsort scratch (~12) + 8 (int64 mask).
REF_BYTES_PER_WEIGHT = 40


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _grads(size: str) -> list[torch.Tensor]:
    if size == "resnet18":
        from salun.models import build_model

        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=64)
        model.eval()
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.abs() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    flat = torch.rand(int(float(size)), generator=g)
    flat[: flat.numel() // 4] = 0  # dead weights: many exact ties at zero, as in real models
    return [flat]


def reference_mask(grads: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    flat = torch.cat([g.reshape(-1) for g in grads])
    ranks = torch.argsort(torch.argsort(flat))  # rank of each weight (ascending)
    keep = (ranks >= flat.numel() - int(round(ratio * flat.numel()))).long()  # int64 mask
    out, start = [], 0
    for g in grads:
        out.append(keep[start : start + g.numel()].view_as(g))
        start += g.numel()
    return out


def salun_mask(grads: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    from salun.methods.saliency import top_k_mask

    return top_k_mask(grads, int(round(ratio * sum(g.numel() for g in grads))))


def child(approach: str, size: str, ratio: float) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    grads = _grads(size)
    base = _peak_mb()
    start = time.perf_counter()
    masks = (salun_mask if approach == "salun" else reference_mask)(grads, ratio)
    seconds = time.perf_counter() - start
    selected = sum(int(torch.count_nonzero(m)) for m in masks)
    mask_bytes = sum(m.numel() * m.element_size() for m in masks)
    n = sum(g.numel() for g in grads)
    print(
        json.dumps(
            {
                "approach": approach,
                "size": size,
                "weights": n,
                "seconds": seconds,
                "peak_extra_mb": _peak_mb() - base,
                "mask_mb": mask_bytes / 2**20,
                "selected": selected,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="resnet18,1e8,2e8,860e6")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.ratio)
        return
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    rows = []
    for size in args.sizes.split(","):
        n = 11_173_962 if size == "resnet18" else int(float(size))
        for approach in ("salun", "reference"):
            need_mb = n * (4 + (REF_BYTES_PER_WEIGHT if approach == "reference" else 6)) / 2**20
            if need_mb > 0.85 * mem_mb:
                rows.append(
                    {
                        "approach": approach,
                        "size": size,
                        "weights": n,
                        "skipped": f"needs ~{need_mb / 1024:.0f} GiB of {mem_mb / 1024:.0f}",
                    }
                )
                continue
            proc = subprocess.run(
                [sys.executable, __file__, "--child", approach, size, "--ratio", str(args.ratio)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                rows.append(
                    {
                        "approach": approach,
                        "size": size,
                        "weights": n,
                        "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}",
                    }
                )
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"mask thresholding at ratio {args.ratio}; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; machine memory {mem_mb / 1024:.1f} GiB\n"
    )
    print("| size | weights | approach | seconds | peak extra MiB | mask MiB | selected |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(
                f"| {r['size']} | {r['weights']:,} | {r['approach']} | - | - | - | {r['skipped']} |"
            )
        else:
            print(
                f"| {r['size']} | {r['weights']:,} | {r['approach']} | {r['seconds']:.2f} | "
                f"{r['peak_extra_mb']:.0f} | {r['mask_mb']:.0f} | {r['selected']:,} |"
            )


if __name__ == "__main__":
    main()
