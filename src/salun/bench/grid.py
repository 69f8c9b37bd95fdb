"""Expand a bench config into named runs.

For every scenario and seed: the original model, Retrain, Retrain' (Retrain from another
initialisation seed: the noise floor), then each method entry. A method
entry whose parameters hold lists expands into one run per combination.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from salun.config import BenchConfig, Config, config_from_dict, parse_override
from salun.core.errors import SalunError
from salun.core.limits import MAX_GRID_RUNS
from salun.core.registry import CONFIG_CHECKS

REFERENCE_KINDS = ("original", "retrain", "retrain_prime")


@dataclass
class RunSpec:
    """One run of the grid: where it lives, what it does, and its resolved config."""

    name: str  # scenario/seed{N}/label (also its folder)
    scenario: str
    seed: int
    kind: str  # original | retrain | retrain_prime | method
    label: str
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    use_mask: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    keys, _ = parse_override(f"{key}=0")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _axes(params: dict[str, Any]) -> list[list[Any]]:
    """The values each parameter takes: a list expands (except ``milestones``, a list value)."""
    return [v if isinstance(v, list) and k != "milestones" else [v] for k, v in params.items()]


def params_count(params: dict[str, Any]) -> int:
    """How many parameter sets ``params`` expands into (the product of the axis sizes)."""
    return math.prod(len(axis) for axis in _axes(params))


def params_at(params: dict[str, Any], index: int) -> dict[str, Any]:
    """The ``index``-th parameter set of :func:`_expand_params`, without expanding the others."""
    axes = _axes(params)
    combo: list[Any] = []
    for axis in reversed(axes):  # itertools.product order: the last axis varies fastest
        index, i = divmod(index, len(axis))
        combo.append(axis[i])
    return dict(zip(params, reversed(combo), strict=True))


def _expand_params(params: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(params)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*_axes(params))]


def _method_params(entry: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (entry or {}).items() if k not in ("method", "use_mask")}


def check_grid_size(b: BenchConfig) -> int:
    """The number of runs of bench grid ``b``, counted from its axis sizes before anything is
    expanded; more than ``MAX_GRID_RUNS`` (salun.core.limits) is a one-line error."""
    per_point = len(REFERENCE_KINDS) + sum(
        params_count(_method_params(entry)) for entry in b.methods.values()
    )
    total = len(b.scenarios) * len(b.seeds) * per_point
    if total > MAX_GRID_RUNS:
        raise SalunError(
            f"bench grid has {total:,} runs ({len(b.scenarios)} scenarios x {len(b.seeds)} seeds "
            f"x {per_point:,} runs each); the limit is {MAX_GRID_RUNS:,}: use fewer seeds, "
            "scenarios or values in the method parameter lists"
        )
    return total


def expand_grid(cfg: Config) -> list[RunSpec]:
    """All runs of ``cfg.bench``, references first within each (scenario, seed)."""
    if cfg.bench is None:
        raise SalunError("this config has no 'bench' section (seeds, scenarios, methods)")
    b = cfg.bench
    if not b.seeds or not all(isinstance(s, int) for s in b.seeds):
        raise SalunError(f"bench.seeds must be a non-empty list of integers, got {b.seeds!r}")
    if not b.methods:
        raise SalunError("bench.methods is empty: name at least one method to run")
    check_grid_size(b)
    base = cfg.to_dict()
    base.pop("bench")
    runs: list[RunSpec] = []
    for scenario, overrides in b.scenarios.items():
        if not isinstance(overrides, dict):
            raise SalunError(f"bench.scenarios.{scenario} must be a mapping of overrides")
        for seed in b.seeds:
            tree = _deep_copy(base)
            for key, value in (overrides or {}).items():
                _set_dotted(tree, key, value)
            tree["seed"] = seed
            prefix = f"{_safe(scenario)}/seed{seed}"
            for kind in REFERENCE_KINDS:
                runs.append(RunSpec(f"{prefix}/{kind}", scenario, seed, kind, kind, config=tree))
            for label, entry in b.methods.items():
                entry = dict(entry or {})
                method = entry.pop("method", label)
                use_mask = entry.pop("use_mask", None)
                for params in _expand_params(entry):
                    varying = [
                        k for k, v in entry.items() if isinstance(v, list) and k != "milestones"
                    ]
                    full = label + "".join(f"[{k}={params[k]}]" for k in varying)
                    run_tree = _deep_copy(tree)
                    run_tree["unlearn"] = {"method": method, "params": params, "use_mask": use_mask}
                    config_from_dict(run_tree)  # validates method name and parameters now
                    runs.append(
                        RunSpec(
                            f"{prefix}/{_safe(full)}",
                            scenario,
                            seed,
                            "method",
                            full,
                            method,
                            params,
                            use_mask,
                            run_tree,
                        )
                    )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SalunError("bench grid has duplicate run names; give method entries distinct labels")
    return runs


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(tree)


@CONFIG_CHECKS.register("bench")
def check_bench_config(cfg: Config) -> None:
    """Every run of the grid must be valid before any starts."""
    if cfg.bench is not None:
        expand_grid(cfg)
