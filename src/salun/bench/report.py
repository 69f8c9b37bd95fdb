"""Aggregate a bench folder into tables (Markdown, CSV, JSON) and plots (PNG).

Every number is recomputed from the run folders' ``metrics.json``. For each scenario and method:
UA, MIA-Efficacy, RA, TA and RTE as mean +- std (sample std, ddof = 1) with a 95 % confidence
interval (Student t, n - 1 degrees of freedom); the per-seed gap |method - Retrain| per metric
and the Avg. Gap (mean of the four gaps) likewise; the run-time ratio RTE / Retrain's training
time. Failed runs are listed with their one-line error. Each scenario states its noise floor:
the Avg. Gap of Retrain' (Retrain from another initialisation seed) to Retrain; a method whose
Avg. Gap is below the floor cannot be told apart from Retrain and is marked so.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from salun.core.catalog import display_name
from salun.core.errors import SalunError
from salun.core.io import read_json, save_figure, write_json, write_text
from salun.core.results import NUM_CLASSES, collapse_note, collapsed, shape_problem
from salun.eval.agreement import tug_of_war
from salun.eval.classification import DEFINITIONS, EVAL_VERSION, METRICS

GAP_KEYS = (*METRICS, "Avg. Gap")
EXTRA_KEYS = ("ToW", "ZRF", "L2-distance")


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample std and the 95 % CI half-width (Student t) of ``values``."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(arr)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": float(arr.mean()), "std": std, "ci95": ci}


#: The fields of a bench run's metrics.json the report reads (see :func:`shape_problem`).
RUN_FIELDS: dict[str, str] = {
    "scenario": "str",
    "label": "str",
    "kind": "str",
    "method": "str?",
    "seed": "int",
    "dataset": "str?",
    "metrics": "dict",
    **{f"metrics.{m}": "num" for m in METRICS},
    "run": "dict",
    "run.rte_seconds": "num?",
    "original_train_acc": "num",
    "retrain_free_estimate": "num?",
    "retrain_distance": "dict?",
    "retrain_distance.L2-distance": "num?",
    "extended": "dict?",
    "extended.ZRF": "num?",
    "extended.mia_family": "dict?",
    **{
        f"extended.mia_family.{k}": "dict?"
        for k in ("SVC-MIA-entropy", "SVC-MIA-m_entropy", "Loss-LR-MIA")
    },
    "extended.mia_family.SVC-MIA-entropy.score": "num?",
    "extended.mia_family.SVC-MIA-m_entropy.score": "num?",
    "extended.mia_family.Loss-LR-MIA.cv_auc": "num?",
}


def _read(path: Path, what: str) -> tuple[Any, str | None]:
    """(the JSON in ``path``, None), or (None, why it cannot be read: one line)."""
    try:
        return read_json(path, what), None
    except SalunError as e:
        return None, str(e).replace(f" {str(path)!r}", "")


def _run_folders(folder: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Every run folder of the bench: those of grid.json (the runs the bench was asked for,
    so a deleted run is still listed) and any other holding a run.json."""
    found = {p.parent for p in folder.glob("*/seed*/*/run.json")}
    failed = []
    if (folder / "grid.json").exists():
        names, why = _read(folder / "grid.json", "grid.json")
        if why is None and not (
            isinstance(names, list) and all(isinstance(n, str) and n for n in names)
        ):
            why = "grid.json is not a list of run names"
        if why is not None:
            failed.append({"name": "grid.json", "error": why})
        else:
            for n in names:
                rel = Path(n)
                if rel.is_absolute() or ".." in rel.parts:
                    failed.append({"name": n, "error": "grid.json names a path outside the bench"})
                else:
                    found.add(folder / rel)
    return sorted(found), failed


def collect(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Finished runs (a valid metrics.json) and the others, each with a one-line reason:
    failed (error.json), unreadable metrics.json (corrupt, or a field of the wrong type) or
    none (not finished, or deleted)."""
    done: list[dict[str, Any]] = []
    runs, failed = _run_folders(folder)
    for run_dir in runs:
        name = run_dir.relative_to(folder).as_posix()
        if (run_dir / "metrics.json").exists():
            m, why = _read(run_dir / "metrics.json", "metrics.json")
            why = why or shape_problem(m, RUN_FIELDS)
            if why is None:
                done.append(m)
            else:
                failed.append({"name": name, "error": f"unreadable metrics.json: {why}"})
        elif (run_dir / "error.json").exists():
            err, why = _read(run_dir / "error.json", "error.json")
            line = err.get("error") if isinstance(err, dict) else None
            reason = why or (" ".join(line.split()) if isinstance(line, str) else "?")
            failed.append({"name": name, "error": reason})
        elif (run_dir / "run.json").exists():
            failed.append({"name": name, "error": "no metrics.json (not finished, or deleted)"})
        else:
            failed.append({"name": name, "error": "missing: the run's folder or run.json is gone"})
    return done, failed


def aggregate(done: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Scenario -> rows (one per method label): Retrain, Retrain', the original, then methods."""
    retrain = {(r["scenario"], r["seed"]): r for r in done if r["kind"] == "retrain"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        groups[(r["scenario"], r["label"])].append(r)
    order = {"retrain": 0, "retrain_prime": 1, "original": 2}
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (scenario, label), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 3), kv[0][1])
    ):
        row: dict[str, Any] = {
            "label": label,
            "method": runs[0]["method"] or runs[0]["kind"],
            "kind": runs[0]["kind"],
            "seeds": sorted(r["seed"] for r in runs),
        }
        for m in METRICS:
            row[m] = summarise([r["metrics"][m] for r in runs])
        row["RTE"] = summarise([r["run"].get("rte_seconds") or 0.0 for r in runs])
        per_seed_gaps: dict[str, list[float]] = defaultdict(list)
        ratios = []
        for r in runs:
            ref = retrain.get((scenario, r["seed"]))
            if ref is None:
                continue
            gaps = [abs(r["metrics"][m] - ref["metrics"][m]) for m in METRICS]
            for m, g in zip(METRICS, gaps, strict=True):
                per_seed_gaps[m].append(g)
            per_seed_gaps["Avg. Gap"].append(sum(gaps) / len(gaps))
            per_seed_gaps["ToW"].append(tug_of_war(r["metrics"], ref["metrics"]))
            ref_time = ref["run"].get("rte_seconds") or 0.0
            if ref_time > 0:
                ratios.append((r["run"].get("rte_seconds") or 0.0) / ref_time)
        row["gap"] = {k: summarise(per_seed_gaps[k]) for k in GAP_KEYS}
        row["ToW"] = summarise(per_seed_gaps["ToW"])
        row["ZRF"] = summarise([r.get("extended", {}).get("ZRF", math.nan) for r in runs])
        fam = [r.get("extended", {}).get("mia_family", {}) for r in runs]
        row["MIA-entropy"] = summarise(
            [f.get("SVC-MIA-entropy", {}).get("score", math.nan) for f in fam]
        )
        row["MIA-m_entropy"] = summarise(
            [f.get("SVC-MIA-m_entropy", {}).get("score", math.nan) for f in fam]
        )
        row["Loss-LR AUC"] = summarise(
            [f.get("Loss-LR-MIA", {}).get("cv_auc", math.nan) for f in fam]
        )
        row["L2-distance"] = summarise(
            [(r.get("retrain_distance") or {}).get("L2-distance", math.nan) for r in runs]
        )
        row["time_ratio"] = summarise(ratios)
        k = NUM_CLASSES.get(runs[0].get("dataset", ""), 10)
        row["num_classes"] = k
        if runs[0]["kind"] not in ("retrain", "retrain_prime"):
            row["collapsed_seeds"] = sorted(r["seed"] for r in runs if collapsed(r["metrics"], k))
        row["original_train_acc"] = summarise([r["original_train_acc"] for r in runs])
        row["estimate"] = summarise(
            [
                math.nan if r.get("retrain_free_estimate") is None else r["retrain_free_estimate"]
                for r in runs
            ]
        )
        out[scenario].append(row)
    return dict(out)


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The Avg. Gap summary of the Retrain' row (the noise floor), or None without one."""
    for r in rows:
        if r["kind"] == "retrain_prime":
            return r["gap"]["Avg. Gap"]
    return None


def _vs_floor(row: dict[str, Any], floor: dict[str, float] | None) -> str:
    if floor is None or row["kind"] in ("retrain", "retrain_prime"):
        return ""
    gap = row["gap"]["Avg. Gap"]["mean"]
    if math.isnan(gap) or math.isnan(floor["mean"]):
        return ""
    return " (≤ floor)" if gap <= floor["mean"] else ""


def _pm(s: dict[str, float], digits: int = 2) -> str:
    if s["n"] == 0 or math.isnan(s["mean"]):
        return "-"
    if s["n"] == 1 or math.isnan(s["std"]):
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _ci(s: dict[str, float], digits: int = 2) -> str:
    if s["n"] < 2:
        return "-"
    return f"[{s['mean'] - s['ci95']:.{digits}f}, {s['mean'] + s['ci95']:.{digits}f}]"


def markdown(
    table: dict[str, list[dict[str, Any]]], failed: list[dict[str, Any]], title: str
) -> str:
    lines = [
        f"# {title}",
        "",
        "Mean ± std over seeds; gaps are |method - Retrain| per seed, then averaged; "
        "CI = 95 % Student-t interval of the Avg. Gap. RTE in seconds (Retrain: its "
        "training time); time ratio = RTE / Retrain's RTE.",
        "",
    ]
    for scenario, rows in table.items():
        acc = rows[0]["original_train_acc"]
        floor = noise_floor(rows)
        floor_line = (
            "No Retrain' runs: no noise floor."
            if floor is None
            else f"Noise floor (Avg. Gap of Retrain', Retrain from another initialisation seed): "
            f"{_pm(floor)}. An Avg. Gap at or below the floor, marked (≤ floor), is not a "
            "difference from Retrain."
        )
        lines += [
            f"## {scenario}",
            "",
            f"Original model's training accuracy: {_pm(acc)} % (seeds {rows[0]['seeds']}).",
            "",
            floor_line,
            "",
            "| method | n | UA | MIA-Efficacy | RA | TA | Avg. Gap | Avg. Gap 95% CI | RTE (s) | time / Retrain |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            cells = [f"{_pm(r[m])} ({_pm(r['gap'][m])})" for m in METRICS]
            bad = r.get("collapsed_seeds") or []
            mark = f" † (seed {', '.join(map(str, bad))})" if bad else ""
            lines.append(
                f"| {display_name(r['label'])}{mark} | {r['UA']['n']} | "
                + " | ".join(cells)
                + f" | {_pm(r['gap']['Avg. Gap'])}{_vs_floor(r, floor)} | {_ci(r['gap']['Avg. Gap'])}"
                f" | {_pm(r['RTE'])} "
                f"| {_pm(r['time_ratio'], 3)} |"
            )
        if any(r.get("collapsed_seeds") for r in rows):
            lines += ["", collapse_note(rows[0].get("num_classes", 10))]
        lines += [
            "",
            "More evaluators: ToW (1 = Retrain's accuracies), ZRF, L2 distance of the weights to "
            "Retrain, SVC-MIA on entropy / modified entropy (% of D_f predicted non-member), "
            "loss-LR attack AUC (retain vs test; 0.5 = chance).",
            "",
            "| method | ToW | ZRF | L2 to Retrain | MIA entropy | MIA m-entropy | loss-LR AUC |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {display_name(r['label'])} | {_pm(r['ToW'], 3)} | {_pm(r['ZRF'], 3)} | {_pm(r['L2-distance'])} "
                f"| {_pm(r['MIA-entropy'])} | {_pm(r['MIA-m_entropy'])} | {_pm(r['Loss-LR AUC'], 3)} |"
            )
        lines.append("")
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{f['name']}`: {f['error']}" for f in failed] + [""]
    lines += [f"## Definitions ({EVAL_VERSION})", ""] + [
        f"- **{k}**: {v}" for k, v in DEFINITIONS.items()
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: dict[str, list[dict[str, Any]]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["scenario", "method", "n"]
    for m in (*METRICS, "RTE"):
        header += [f"{m} mean", f"{m} std", f"{m} ci95"]
    for m in GAP_KEYS:
        header += [f"gap {m} mean", f"gap {m} std", f"gap {m} ci95"]
    header += ["time ratio mean", "original train acc"]
    w.writerow(header)
    for scenario, rows in table.items():
        for r in rows:
            line = [scenario, r["label"], r["UA"]["n"]]
            for m in (*METRICS, "RTE"):
                line += [r[m]["mean"], r[m]["std"], r[m]["ci95"]]
            for m in GAP_KEYS:
                line += [r["gap"][m]["mean"], r["gap"][m]["std"], r["gap"][m]["ci95"]]
            line += [r["time_ratio"]["mean"], r["original_train_acc"]["mean"]]
            w.writerow(line)
    return buf.getvalue()


def _save(fig: Any, path: Path) -> None:
    save_figure(path, lambda p: fig.savefig(p, format="png"))


def _plots(table: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    files = []
    for scenario, rows in table.items():
        rows_m = [r for r in rows if r["kind"] not in ("retrain", "retrain_prime", "original")]
        rows_m.sort(
            key=lambda r: (math.isnan(r["gap"]["Avg. Gap"]["mean"]), r["gap"]["Avg. Gap"]["mean"])
        )
        fig = Figure(figsize=(1.5 + 1.1 * len(rows_m), 3.4), dpi=110)
        ax = fig.add_subplot()
        means = [r["gap"]["Avg. Gap"]["mean"] for r in rows_m]
        errs = [
            0 if math.isnan(r["gap"]["Avg. Gap"]["std"]) else r["gap"]["Avg. Gap"]["std"]
            for r in rows_m
        ]
        ax.bar(range(len(rows_m)), means, yerr=errs, capsize=3, color="tab:blue")
        ax.set_xticks(
            range(len(rows_m)), [display_name(r["label"]) for r in rows_m], rotation=25, ha="right"
        )
        ax.set_ylabel("Avg. Gap to Retrain (points)\nlower is better")
        floor = noise_floor(rows)
        nothing = next((r["gap"]["Avg. Gap"] for r in rows if r["kind"] == "original"), None)
        for line, style, what in (
            (floor, ":", "Retrain' (noise floor)"),
            (nothing, "--", "do nothing"),
        ):
            if line is not None and not math.isnan(line["mean"]):
                ax.axhline(
                    line["mean"], color="black", ls=style, lw=1, label=f"{what}: {line['mean']:.2f}"
                )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(f"{scenario}: Avg. Gap (mean ± std over seeds)", fontsize=9)
        fig.tight_layout()
        name = f"gaps_{scenario}.png"
        _save(fig, out / name)
        files.append(name)

        fig = Figure(figsize=(4.6, 3.8), dpi=110)
        ax = fig.add_subplot()
        for r in rows:
            ua, ta = r["UA"], r["TA"]
            ax.errorbar(
                ta["mean"],
                ua["mean"],
                xerr=0 if math.isnan(ta["std"]) else ta["std"],
                yerr=0 if math.isnan(ua["std"]) else ua["std"],
                fmt="*" if r["kind"] == "retrain" else "o",
                capsize=2,
                label=display_name(r["label"]),
            )
        ax.set_xlabel("TA (%)  - utility")
        ax.set_ylabel("UA (%)  - forgetting")
        ax.set_title(f"{scenario}: forgetting vs utility", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"scatter_{scenario}.png"
        _save(fig, out / name)
        files.append(name)
    return files


def build_report(folder: str | Path, plots: bool = True) -> dict[str, Any]:
    """Write report.md, report.csv, report.json (and PNG plots) into ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SalunError(f"bench folder {str(folder)!r} does not exist")
    done, failed = collect(folder)
    if not done and not failed:
        raise SalunError(
            f"no runs under {str(folder)!r}: run 'salun bench PRESET --out {folder}' first"
        )
    table = aggregate(done)
    title = f"Benchmark report: {folder.name}"
    write_text(folder / "report.md", markdown(table, failed, title))
    write_text(folder / "report.csv", to_csv(table))
    payload = {
        "scenarios": table,
        "failed": failed,
        "runs": len(done),
        "definitions": DEFINITIONS,
        "evaluator_version": EVAL_VERSION,
    }
    write_json(folder / "report.json", payload)
    if plots and table:
        payload["plots"] = _plots(table, folder)
    return payload
