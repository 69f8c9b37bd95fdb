"""Population attacks over seeds: the NeurIPS 2023 challenge's epsilon score and U-LiRA.

For each seed of a bench preset it trains (or loads from the cache) the original model, builds
one retrained population (shared by every method through the cache), then scores each method:

    python benchmarks/population.py fmnist-random10-tuned --seeds 0,1,2 \
        --methods retrain,salun,rl,ft --models 4 --shadows 8 --out runs/population.json

Method parameters come from the preset's ``bench.methods``. Prints one row per method with
mean +- std over seeds; ``--out`` keeps every per-seed figure (JSON, written after each step so
an interrupted run keeps what it measured). ``--shadows 0`` skips U-LiRA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from salun.attacks.epsilon import epsilon_score, retrain_population
from salun.attacks.lira import ulira
from salun.config import load_config
from salun.core.io import write_json
from salun.run import method_uses_mask, prepare, train_model


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default="retrain,salun,rl,ft")
    ap.add_argument("--models", type=int, default=4, help="epsilon: models per population")
    ap.add_argument("--shadows", type=int, default=8, help="U-LiRA shadows (0: skip)")
    ap.add_argument("--no-epsilon", action="store_true", help="skip the epsilon score")
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--cache", default="runs/bench-cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    for seed in seeds:
        base = load_config(
            args.preset, ["progress=false", f"cache_dir={args.cache}", f"seed={seed}"]
        )
        table = base.bench.methods if base.bench is not None else {}
        cfg = load_config(
            args.preset, [f"seed={seed}", "progress=false", f"cache_dir={args.cache}"]
        )
        cfg.bench = None
        exp = prepare(cfg)
        original, _ = train_model(exp, "original")
        start = time.perf_counter()
        reference = None if args.no_epsilon else retrain_population(exp, args.models)
        print(f"seed {seed}: retrain population in {time.perf_counter() - start:.0f}s", flush=True)
        for name in methods:
            params = {} if name == "retrain" else dict(table.get(name, {}))
            mask = False
            if name != "retrain":
                cfg.unlearn.method, cfg.unlearn.params = name, params
                mask = method_uses_mask(cfg)
            row: dict[str, float] = {}
            if reference is not None:
                t0 = time.perf_counter()
                e = epsilon_score(
                    exp,
                    name,
                    params,
                    use_mask=mask,
                    n_models=args.models,
                    original=original,
                    reference=reference,
                )
                row.update(
                    F=e["forgetting_quality"],
                    final=e["final_score"],
                    eps_mean=e["epsilon_mean"],
                    eps_seconds=round(time.perf_counter() - t0, 1),
                )
            if args.shadows:
                t0 = time.perf_counter()
                u = ulira(
                    exp, name, params, use_mask=mask, n_shadows=args.shadows, n_targets=args.targets
                )
                row.update(
                    ulira_acc=u["accuracy"],
                    ulira_auc=u["auc"],
                    ulira_seconds=round(time.perf_counter() - t0, 1),
                )
            results[name][str(seed)] = row
            print(f"seed {seed} {name}: {row}", flush=True)
            if args.out:
                write_json(
                    Path(args.out),
                    {
                        "preset": args.preset,
                        "models": args.models,
                        "shadows": args.shadows,
                        "results": results,
                    },
                )
    keys = []
    if not args.no_epsilon:
        keys += [
            ("F", "ε forgetting quality F"),
            ("final", "ε final score"),
            ("eps_mean", "mean ε"),
        ]
    if args.shadows:
        keys += [("ulira_acc", "U-LiRA balanced acc. (%)"), ("ulira_auc", "U-LiRA AUC")]
    print(f"\n{args.preset}, seeds {seeds}, N = {args.models}, shadows = {args.shadows}\n")
    print("| method | " + " | ".join(label for _, label in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name in methods:
        cells = [_mean_std([r[k] for r in results[name].values()]) for k, _ in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
