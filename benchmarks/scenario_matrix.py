"""Scenario matrix: do the shipped defaults hold where nobody tuned them?

Fashion-MNIST at the bench presets' size (4000 train / 2000 test subset, 10 % of the training
pool held out as the validation split, small CNN, original trained 40 epochs), 3 seeds, every
method at its shipped defaults (no tuning per scenario): class-wise forgetting of each of the 10
classes and random forgetting of 1 %, 10 % and 50 %. Rows: Retrain' (Retrain from another
initialisation seed: the noise floor), do nothing (the original), SalUn, RL, FT, l1-sparse,
SalUn-soft, SCRUB, NegGrad+. Every run also gets the Retrain-free estimate of its Avg. Gap
(salun.methods._calibrate) and the script reports its Spearman correlation with the true gap.

Each (scenario, seed) cell runs in its own process (``--jobs`` at a time, one thread each);
originals are shared per seed through a per-seed cache guarded by a file lock, so each is
trained once. The classification path never imports diffusers.

Usage:
    python benchmarks/scenario_matrix.py --jobs 16 --device cuda --out runs/matrix
    python benchmarks/scenario_matrix.py --size smoke --jobs 2 --out /tmp/matrix   # digits, <60 s
Writes OUT/matrix.md (the tables, targets with PASS/MISS and margins) and OUT/matrix.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ("salun", "rl", "ft", "l1_sparse", "salun_soft", "scrub", "neggrad_plus")
LABELS = {
    "retrain_prime": "Retrain' (floor)",
    "original": "do nothing",
    "salun": "SalUn",
    "rl": "RL",
    "ft": "FT",
    "l1_sparse": "l1-sparse",
    "salun_soft": "SalUn-soft",
    "scrub": "SCRUB",
    "neggrad_plus": "NegGrad+",
}

SIZES = {
    "full": {
        "seeds": [0, 1, 2],
        "scenarios": {
            **{f"class{k}": ["data.scenario=class", f"data.forget_class={k}"] for k in range(10)},
            **{
                f"random{r}": ["data.scenario=random", f"data.forget_ratio={r / 100}"]
                for r in (1, 10, 50)
            },
        },
        "overrides": [
            "data.name=fashion-mnist",
            "data.train_subset=4000",
            "data.test_subset=2000",
            "data.val_fraction=0.1",
            "model.name=cnn",
            "model.width=16",
            "model.channels_last=true",
            "train.epochs=40",
            "train.lr=0.05",
            "train.batch_size=128",
            "train.schedule=cosine",
            "train.weight_decay=0.0005",
        ],
        "params": {},
    },
    "smoke": {  # digits, tiny: exercises every path in well under a minute
        "seeds": [0],
        "scenarios": {
            "class3": ["data.scenario=class", "data.forget_class=3"],
            "random10": ["data.scenario=random", "data.forget_ratio=0.1"],
        },
        "overrides": [
            "data.name=digits",
            "data.image_size=16",
            "data.train_subset=240",
            "data.test_subset=80",
            "data.val_fraction=0.2",
            "model.name=cnn",
            "model.width=8",
            "train.epochs=2",
            "train.lr=0.05",
            "train.batch_size=64",
        ],
        "params": {"epochs": 1, "batch_size": 64},
    },
}


# -- one cell (runs in a child process) --------------------------------------------------------
def run_cell(
    size: str,
    scenario: str,
    seed: int,
    device: str,
    cache: Path,
    out: Path,
    methods: tuple[str, ...] = METHODS,
) -> None:
    import torch

    from salun.config import load_config
    from salun.eval import avg_gap
    from salun.run import (
        evaluate,
        method_uses_mask,
        prepare,
        retrain_free_estimate,
        train_model,
        unlearn_once,
    )

    torch.set_num_threads(1)
    spec = SIZES[size]
    overrides = [
        *spec["overrides"],
        *spec["scenarios"][scenario],
        f"seed={seed}",
        f"device={device}",
        "threads=1",
        "progress=false",
        "eval.extended=false",
        f"cache_dir={cache / f'seed{seed}'}",
    ]
    cfg = load_config(None, overrides)
    exp = prepare(cfg)
    Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.cache_dir) / "original.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains the seed's original, others wait
        original, orig_info = train_model(exp, "original")
        fcntl.flock(lock, fcntl.LOCK_UN)
    retrain, _ = train_model(exp, "retrain")
    ref = evaluate(exp, retrain)
    rows = {}

    def record(name, model, seconds, extra=None):
        m = evaluate(exp, model)
        rows[name] = {
            **{k: m[k] for k in ("UA", "MIA-Efficacy", "RA", "TA")},
            "gap": avg_gap(m, ref)["Avg. Gap"],
            "estimate": retrain_free_estimate(exp, original, model),
            "seconds": seconds,
            **(extra or {}),
        }

    prime, pinfo = train_model(exp, "retrain_prime")
    record("retrain_prime", prime, pinfo.get("seconds"))
    record("original", original, 0.0)
    for name in methods:
        cfg.unlearn.method, cfg.unlearn.params = name, dict(spec["params"])
        model, info = unlearn_once(exp, original, name, spec["params"], mask=method_uses_mask(cfg))
        record(name, model, info["rte_seconds"], {"calibration": info.get("calibration")})
    result = {
        "scenario": scenario,
        "seed": seed,
        "size": size,
        "retrain": {k: ref[k] for k in ("UA", "MIA-Efficacy", "RA", "TA")},
        "original_train_acc": orig_info.get("train_acc"),
        "rows": rows,
        "evaluator": ref["evaluator"],
        "diffusers_imported": "diffusers" in sys.modules,
    }
    out.write_text(json.dumps(result, indent=1))


# -- the driver --------------------------------------------------------------------------------
def _launch(args, scenario: str, seed: int, out: Path) -> tuple[str, int, str | None]:
    path = out / "cells" / f"{scenario}-seed{seed}.json"
    if path.is_file():
        return scenario, seed, None
    cmd = [
        sys.executable,
        __file__,
        "--cell",
        scenario,
        str(seed),
        "--size",
        args.size,
        "--device",
        args.device,
        "--out",
        str(out),
        "--methods",
        *args.methods,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return scenario, seed, tail
    return scenario, seed, None


def _stats(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return mean, std


def _pm(values: list[float]) -> str:
    mean, std = _stats(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def report(cells: list[dict], failed: list[str], elapsed: float, cmd: str) -> tuple[str, dict]:
    from scipy.stats import spearmanr

    groups: dict[str, list[dict]] = {"class-wise (all classes)": []}
    for c in cells:
        key = "class-wise (all classes)" if c["scenario"].startswith("class") else c["scenario"]
        groups.setdefault(key, []).append(c)
    groups = {k: v for k, v in groups.items() if v}
    lines = [
        "# Scenario matrix",
        "",
        f"Command: `{cmd}` ({elapsed:.0f} s). Avg. Gap to Retrain, mean ± std over runs; "
        "the floor is Retrain' (Retrain from init seed + 1000); an Avg. Gap at or below the "
        "floor is not a difference from Retrain.",
        "",
    ]
    names = list(LABELS)
    head = "| group | n | " + " | ".join(LABELS[n] for n in names) + " |"
    lines += [head, "|---|---:|" + "---:|" * len(names)]
    for g, cs in groups.items():
        cellv = [_pm([c["rows"][n]["gap"] for c in cs if n in c["rows"]]) for n in names]
        lines.append(f"| {g} | {len(cs)} | " + " | ".join(cellv) + " |")
    lines.append("")
    targets: list[dict] = []
    cls = groups.get("class-wise (all classes)", [])
    if cls:
        lines += ["SalUn's UA per forgotten class (mean over seeds; min in brackets):", ""]
        per_class: dict[str, list[float]] = {}
        for c in cls:
            per_class.setdefault(c["scenario"], []).append(c["rows"]["salun"]["UA"])
        lines += ["| class | " + " | ".join(sorted(per_class)) + " |"]
        lines += ["|---|" + "---:|" * len(per_class)]
        lines += [
            "| SalUn UA | "
            + " | ".join(f"{_stats(v)[0]:.1f} [{min(v):.1f}]" for _, v in sorted(per_class.items()))
            + " |",
            "",
        ]
        worst = min(min(v) for v in per_class.values())
        targets.append(
            {
                "target": "class-wise: SalUn UA >= 99 on every class (every seed)",
                "value": worst,
                "margin": worst - 99.0,
            }
        )
        mean_gap = _stats([c["rows"]["salun"]["gap"] for c in cls])[0]
        targets.append(
            {
                "target": "class-wise: SalUn mean Avg. Gap <= 1.0",
                "value": mean_gap,
                "margin": 1.0 - mean_gap,
            }
        )
    for g, cs in groups.items():
        if g.startswith("class"):
            continue
        salun = _stats([c["rows"]["salun"]["gap"] for c in cs])[0]
        floor = _stats([c["rows"]["retrain_prime"]["gap"] for c in cs])[0]
        targets.append(
            {
                "target": f"{g}: SalUn Avg. Gap <= floor + 1.5 ({floor:.2f} + 1.5)",
                "value": salun,
                "margin": floor + 1.5 - salun,
            }
        )
        worst = min(c["rows"]["original"]["gap"] - c["rows"]["salun"]["gap"] for c in cs)
        targets.append(
            {
                "target": f"{g}: SalUn Avg. Gap below do-nothing on every seed",
                "value": worst,
                "margin": worst,
                "strict": True,  # equal to doing nothing (no safe step) is not below it
            }
        )
    lines += ["## Targets", "", "| target | value | margin | |", "|---|---:|---:|---|"]
    for t in targets:
        ok = t["margin"] > 0 if t.get("strict") else t["margin"] >= 0
        t["pass"] = bool(ok) if not math.isnan(t["margin"]) else False
        lines.append(
            f"| {t['target']} | {t['value']:.2f} | {t['margin']:+.2f} | "
            f"{'PASS' if t['pass'] else 'MISS'} |"
        )
    est, gap = [], []
    for c in cells:
        for r in c["rows"].values():
            if r.get("estimate") is not None and not math.isnan(r["estimate"]):
                est.append(r["estimate"])
                gap.append(r["gap"])
    rho = float(spearmanr(est, gap).statistic) if len(est) > 2 else math.nan
    lines += [
        "",
        f"Spearman correlation between the Retrain-free estimate and the true Avg. Gap over "
        f"{len(est)} runs (every row of every cell): {rho:.3f}.",
    ]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- {f}" for f in failed]
    evaluator = cells[0]["evaluator"]["version"] if cells else "?"
    lines += ["", f"Evaluator {evaluator}."]
    payload = {
        "cells": cells,
        "targets": targets,
        "spearman": rho,
        "runs": len(est),
        "failed": failed,
        "seconds": elapsed,
        "command": cmd,
    }
    return "\n".join(lines) + "\n", payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--out", default="runs/scenario-matrix")
    ap.add_argument(
        "--scenarios", nargs="*", default=None, help="a subset of the size's scenarios (names)"
    )
    ap.add_argument(
        "--methods", nargs="*", default=list(METHODS), choices=METHODS, help="a subset of rows"
    )
    ap.add_argument("--cell", nargs=2, metavar=("SCENARIO", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.cell:
        scenario, seed = args.cell[0], int(args.cell[1])
        run_cell(
            args.size,
            scenario,
            seed,
            args.device,
            out / "cache",
            out / "cells" / f"{scenario}-seed{seed}.json",
            tuple(args.methods),
        )
        return 0
    (out / "cells").mkdir(parents=True, exist_ok=True)
    spec = SIZES[args.size]
    seeds = spec["seeds"] if args.seeds is None else args.seeds
    # seeds interleaved: the first cells train every seed's original at once, the rest wait
    scenarios = list(spec["scenarios"]) if args.scenarios is None else args.scenarios
    unknown = sorted(set(scenarios) - set(spec["scenarios"]))
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; allowed: {', '.join(spec['scenarios'])}")
    todo = [(s, seed) for s in scenarios for seed in seeds]
    start = time.perf_counter()
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for scenario, seed, err in pool.map(lambda t: _launch(args, t[0], t[1], out), todo):
            status = "ok" if err is None else f"FAILED: {err}"
            print(f"{scenario} seed {seed}: {status}", flush=True)
            if err is not None:
                failed.append(f"{scenario} seed {seed}: {err}")
    cells = []
    for scenario, seed in todo:
        path = out / "cells" / f"{scenario}-seed{seed}.json"
        if path.is_file():
            cells.append(json.loads(path.read_text()))
    cmd = "python benchmarks/scenario_matrix.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text, payload = report(cells, failed, time.perf_counter() - start, cmd)
    (out / "matrix.md").write_text(text)
    (out / "matrix.json").write_text(json.dumps(payload, indent=1))
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
