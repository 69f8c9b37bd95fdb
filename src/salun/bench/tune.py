"""Hyperparameter search under a declared budget, selected on splits that are never reported.

The search space is the bench preset's method entries with list-valued parameters. Each
candidate runs on *tuning seeds* (default 100: a different training subset, split and forget
set than the reporting seeds 0, 1, 2), and the candidate with the lowest mean Avg. Gap to Retrain
wins. The winners are written as a ready-to-run preset (``selected.yaml``) whose bench section
keeps the original seeds, so reported numbers are never tuned on themselves.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import yaml

from salun.bench.grid import _expand_params
from salun.bench.report import aggregate, collect
from salun.bench.runner import run_bench
from salun.config import Config, config_from_dict
from salun.core.errors import SalunError
from salun.core.io import write_json, write_text

SEARCHES = ("grid", "random")


def candidates(entry: dict[str, Any], search: str, budget: int | None, seed: int) -> list[dict]:
    """Parameter sets to try for one method entry (grid: all; random: ``budget`` of them)."""
    if search not in SEARCHES:
        raise SalunError(f"unknown search {search!r}; allowed: {', '.join(SEARCHES)}")
    combos = _expand_params(entry)
    if search == "grid":
        if budget is not None and len(combos) > budget:
            raise SalunError(
                f"grid of {len(combos)} candidates exceeds the budget of {budget}; "
                "use --search random or a larger --budget"
            )
        return combos
    rng = random.Random(seed)
    return rng.sample(combos, k=min(budget or len(combos), len(combos)))


def run_tune(
    cfg: Config,
    out: str | Path,
    seeds: list[int] | None = None,
    search: str = "grid",
    budget: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search each method's parameters on the tuning seeds; write selected.yaml and tuning.json."""
    if cfg.bench is None or not cfg.bench.methods:
        raise SalunError("tuning needs a bench preset with a 'bench.methods' search space")
    out = Path(out)
    tune_seeds = seeds or [100]
    overlap = sorted(set(tune_seeds) & set(cfg.bench.seeds))
    if overlap:
        raise SalunError(
            f"tuning seeds {overlap} are also reporting seeds; pick others (reporting: {cfg.bench.seeds})"
        )
    tree = cfg.to_dict()
    search_space = tree["bench"]["methods"]
    trial_methods: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[str, dict[str, Any]]] = {}
    for label, entry in search_space.items():
        entry = dict(entry or {})
        meta = {k: entry.pop(k) for k in ("method", "use_mask") if k in entry}
        for i, params in enumerate(candidates(entry, search, budget, seed=len(trial_methods))):
            name = f"{label}~{i}"
            trial_methods[name] = {"method": meta.get("method", label), **meta, **params}
            origin[name] = (label, params)
    tune_tree = copy.deepcopy(tree)
    tune_tree["bench"] = {**tree["bench"], "seeds": tune_seeds, "methods": trial_methods}
    tune_cfg = config_from_dict(tune_tree)
    counts = run_bench(tune_cfg, out, cache_dir=cache_dir, progress=progress)

    done, failed = collect(out)
    table = aggregate(done)
    scores: dict[str, list[tuple[float, str]]] = {}
    for rows in table.values():
        for row in rows:
            if row["label"] in origin:
                gap = row["gap"]["Avg. Gap"]["mean"]
                scores.setdefault(origin[row["label"]][0], []).append(
                    (math.inf if math.isnan(gap) else gap, row["label"])
                )
    selected_methods: dict[str, dict[str, Any]] = {}
    trials: dict[str, list[dict[str, Any]]] = {}
    for label, entry in search_space.items():
        ranked = sorted(scores.get(label, []))
        trials[label] = [{"params": origin[n][1], "avg_gap": g} for g, n in ranked]
        if not ranked:
            raise SalunError(f"no finished tuning run for method {label!r}; see {out}/report.md")
        best = origin[ranked[0][1]][1]
        keep = {k: v for k, v in (entry or {}).items() if k in ("method", "use_mask")}
        selected_methods[label] = {**keep, **best}
    selected = copy.deepcopy(tree)
    selected["bench"]["methods"] = selected_methods
    config_from_dict(selected)  # the shipped preset must load
    header = (
        f"# Selected by `salun tune` ({search} search, budget {budget or 'all'}) on tuning seeds "
        f"{tune_seeds}, by mean Avg. Gap to Retrain.\n# Reporting seeds {cfg.bench.seeds} were "
        "never used for selection.\n"
    )
    write_text(out / "selected.yaml", header + yaml.safe_dump(selected, sort_keys=False))
    result = {
        "search": search,
        "budget": budget,
        "tuning_seeds": tune_seeds,
        "reporting_seeds": cfg.bench.seeds,
        "selected": selected_methods,
        "trials": trials,
        "runs": counts,
        "failed": failed,
    }
    write_json(out / "tuning.json", result)
    return result
