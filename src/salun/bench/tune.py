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

from salun.bench.grid import _expand_params, params_at, params_count
from salun.bench.report import aggregate, collect
from salun.bench.runner import run_bench
from salun.config import Config, config_from_dict, dump_yaml
from salun.core.errors import SalunError
from salun.core.io import write_json, write_text
from salun.core.limits import MAX_GRID_RUNS, MAX_SEED

SEARCHES = ("grid", "random")


def candidates(entry: dict[str, Any], search: str, budget: int | None, seed: int) -> list[dict]:
    """Parameter sets to try for one method entry (grid: all; random: ``budget`` of them)."""
    if search not in SEARCHES:
        raise SalunError(f"unknown search {search!r}; allowed: {', '.join(SEARCHES)}")
    if budget is not None and budget < 1:
        raise SalunError(f"--budget must be a positive integer, got {budget}")
    count = params_count(entry)  # counted, not expanded: a search space may be huge
    if search == "grid":
        if budget is not None and count > budget:
            raise SalunError(
                f"grid of {count:,} candidates exceeds the budget of {budget}; "
                "use --search random or a larger --budget"
            )
        if count > MAX_GRID_RUNS:
            raise SalunError(
                f"grid of {count:,} candidates exceeds the limit of {MAX_GRID_RUNS:,}; "
                "use --search random with a --budget"
            )
        return _expand_params(entry)
    k = min(budget or count, count)
    if k > MAX_GRID_RUNS:
        raise SalunError(
            f"random search of {k:,} candidates exceeds the limit of {MAX_GRID_RUNS:,}; "
            f"give a --budget of at most {MAX_GRID_RUNS:,}"
        )
    rng = random.Random(seed)
    return [params_at(entry, i) for i in rng.sample(range(count), k=k)]


def parse_seeds(text: str) -> list[int]:
    """Comma-separated tuning seeds (``--seeds 100,101``); a bad item is a one-line error."""
    seeds = []
    for item in text.split(","):
        try:
            seed = int(item.strip())
        except ValueError:
            seed = -1
        if not 0 <= seed <= MAX_SEED:
            raise SalunError(
                f"--seeds item {item.strip()!r} is not a seed: give integers in 0..{MAX_SEED} "
                "separated by commas (e.g. 100,101)"
            )
        seeds.append(seed)
    return seeds


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
    write_text(out / "selected.yaml", header + dump_yaml(selected))
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
