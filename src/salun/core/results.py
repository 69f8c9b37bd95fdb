"""Readable results: Markdown tables and a PNG bar chart of gaps to Retrain."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salun.core.io import save_figure

COLUMNS = ("UA", "MIA-Efficacy", "RA", "TA", "Avg. Gap", "RTE (s)")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float | int):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """Rows are dicts with a 'name' and the column values; gaps to Retrain in parentheses."""
    head = "| method | " + " | ".join(columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    lines = [head, sep]
    for r in rows:
        cells = []
        for c in columns:
            v = _fmt(r.get(c))
            gap = r.get("gaps", {}).get(c)
            if gap is not None and c not in ("Avg. Gap", "RTE (s)"):
                v += f" ({_fmt(gap)})"
            cells.append(v)
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor_note(floor: float, gap: float | None = None) -> str:
    """One line on the noise floor: Retrain' (Retrain from another initialisation seed) vs
    Retrain. A gap below it is not a difference from Retrain."""
    line = (
        f"Noise floor (Avg. Gap of Retrain' = Retrain from another init seed): {_fmt(floor)}; "
        "an Avg. Gap below the floor is not a difference from Retrain"
    )
    if gap is not None and not math.isnan(gap) and not math.isnan(floor):
        verdict = (
            "below the floor: within Retrain's own noise"
            if gap <= floor
            else (f"{gap - floor:.2f} above the floor")
        )
        line += f" (this run: {_fmt(gap)}, {verdict})"
    return line + "."


def gap_bar_chart(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Grouped bars of |method - Retrain| per metric plus the Avg. Gap, one group a method,
    sorted by Avg. Gap (best first). The Retrain' row (the noise floor) and the original model
    (the do-nothing gap) are drawn as horizontal lines at their Avg. Gap, not as bars; a zero
    gap is drawn as a short black tick so it is visible."""
    from matplotlib.figure import Figure

    metrics = ["UA", "MIA-Efficacy", "RA", "TA", "Avg. Gap"]
    rows = [r for r in rows if r.get("gaps")]
    floor = next((r for r in rows if str(r["name"]).startswith("Retrain'")), None)
    nothing = next((r for r in rows if str(r["name"]).startswith("Original")), None)
    methods = [r for r in rows if r is not floor and r is not nothing]
    methods = sorted(methods, key=lambda r: r["gaps"].get("Avg. Gap", math.inf))
    fig = Figure(figsize=(2.2 + 1.3 * max(len(methods), 1), 3.9), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(methods))]
        ys = [r["gaps"].get(m, 0.0) for r in methods]
        bars = ax.bar(xs, ys, width, label=m, edgecolor="black" if m == "Avg. Gap" else None)
        zero = [(x, y) for x, y in zip(xs, ys, strict=True) if abs(y) < 1e-9]
        if zero:
            ax.plot(
                [x for x, _ in zero],
                [0.0] * len(zero),
                marker="_",
                ms=10,
                mew=2.5,
                ls="",
                color=bars.patches[0].get_facecolor(),
            )
    for row, style, what in ((floor, ":", "Retrain' (noise floor)"), (nothing, "--", "do nothing")):
        if row is not None and not math.isnan(row["gaps"].get("Avg. Gap", math.nan)):
            g = row["gaps"]["Avg. Gap"]
            ax.axhline(g, color="black", ls=style, lw=1, label=f"{what}: Avg. Gap {g:.2f}")
    ax.set_xticks(range(len(methods)), [str(r["name"]) for r in methods], rotation=20)
    ax.set_ylabel("|method - Retrain| (points)\nlower is better")
    top = ax.get_ylim()[1]
    ax.set_ylim(-0.03 * top, top)  # room below 0, so the zero ticks stand off the axis
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    save_figure(path, lambda p: fig.savefig(p, format="png"))


#: Classes per dataset, for the chance level of a collapsed model.
NUM_CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
#: A model whose RA or TA is within this many points of chance (100 / classes) has collapsed.
COLLAPSE_MARGIN = 10.0


def collapsed(metrics: dict[str, Any], num_classes: int, margin: float = COLLAPSE_MARGIN) -> bool:
    """Whether a classifier collapsed while forgetting: its retain (RA) or test (TA) accuracy is
    within ``margin`` points of chance, 100 / ``num_classes``. Its UA and MIA-Efficacy then say
    nothing about forgetting (a model that is right about nothing "forgets" everything)."""
    chance = 100.0 / num_classes
    return any(
        isinstance(metrics.get(k), int | float) and metrics[k] <= chance + margin
        for k in ("RA", "TA")
    )


def collapse_note(num_classes: int, margin: float = COLLAPSE_MARGIN) -> str:
    chance = 100.0 / num_classes
    return (
        f"† collapsed: RA or TA within {margin:.0f} points of chance ({chance:.0f} % for "
        f"{num_classes} classes) on the seeds named; the model forgot by breaking, so its UA and "
        "MIA-Efficacy do not measure forgetting."
    )


_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    # a number: NaN is allowed (a metric that could not be computed), infinities are not
    "num": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and not math.isinf(v),
        "a number",
    ),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
}


def shape_problem(obj: Any, fields: dict[str, str]) -> str | None:
    """What is wrong with a JSON record read back (``metrics.json``), or None.

    ``fields`` maps dotted paths (``metrics.UA``) to a kind: str, int, num, dict or list; a
    trailing ``?`` makes the field optional (absent or null). Paths are checked in order, so
    give a parent before its children.
    """
    if not isinstance(obj, dict):
        return f"not a JSON object (a {type(obj).__name__})"
    for path, kind in fields.items():
        optional = kind.endswith("?")
        check, what = _KINDS[kind.rstrip("?")]
        value: Any = obj
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None and optional:
            continue
        if value is None:
            return f"{path} is missing"
        if not check(value):
            return f"{path} is {str(value)[:40]!r}, not {what}"
    return None


#: The fields of a demo scenario's metrics.json the report reads.
DEMO_FIELDS = {
    "scenario": "str",
    "dataset": "str?",
    "seed": "int?",
    "title": "str",
    "rows": "list",
    "original": "dict",
    "original.info": "dict",
    "original.info.train_acc": "num?",
    "sizes": "dict?",
    "sizes.train": "int?",
    "sizes.forget": "int?",
    "forget_class_name": "str?",
}


def _demo_row_problem(rows: list[Any]) -> str | None:
    if not rows:
        return "rows is empty"
    for i, row in enumerate(rows):
        fields = {"name": "str", **{c: "num?" for c in COLUMNS}}
        problem = shape_problem(row, fields)
        if problem:
            return f"rows[{i}]: {problem}"
    return None


def _demo_scan(folder: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The readable scenario results of one ``salun demo --out`` folder (sorted by name), and
    (scenario folder, problem) for each scenario folder whose metrics.json is missing (deleted:
    demo folders are written complete or not at all) or unreadable."""
    from salun.core.errors import SalunError
    from salun.core.io import read_json

    out, problems = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = sub / "metrics.json"
        if not path.exists():
            if any((sub / f).exists() for f in ("split.json", "report.md", "config.yaml")):
                problems.append((sub.name, "metrics.json is missing (deleted or unfinished)"))
            continue
        try:
            m = read_json(path, "metrics.json")
        except SalunError as e:
            problems.append((sub.name, str(e).replace(f" {str(path)!r}", "")))
            continue
        problem = shape_problem(m, DEMO_FIELDS) or _demo_row_problem(m["rows"])
        if problem:
            problems.append((sub.name, f"metrics.json is unreadable: {problem}"))
        else:
            out.append(m)
    return out, problems


def _demo_results(folder: Path) -> list[dict[str, Any]]:
    """The readable scenarios' metrics.json of one ``salun demo --out`` folder."""
    return _demo_scan(folder)[0]


def _generation_demo(folder: Path) -> dict[str, Any] | None:
    """The metrics.json of a ``salun demo --task ddpm|text_to_image`` folder, or None."""
    from salun.core.errors import SalunError
    from salun.core.io import read_json

    try:
        m = read_json(folder / "metrics.json", "metrics.json")
    except SalunError:
        return None
    if not isinstance(m, dict) or not isinstance(m.get("title"), str):
        return None
    rows = m.get("rows")
    if isinstance(rows, list) and rows:
        ok = all(
            isinstance(r, dict) and "name" in r and isinstance(r.get("gaps", {}), dict)
            for r in rows
        )
        return m if ok else None
    return m if isinstance(m.get("table"), str) else None


def generation_demo_table(m: dict[str, Any]) -> str:
    """The table of a generation demo's metrics.json again (its own columns)."""
    if not m.get("rows"):
        return f"## {m['title']}\n\n{m['table']}\n"
    skip = {"name", "gaps", "method", "collapsed"}
    columns = [k for k in m["rows"][0] if k not in skip]
    return f"## {m['title']}\n\n{markdown_table(m['rows'], columns)}\n"


def is_demo_folder(folder: str | Path) -> bool:
    """A folder written by ``salun demo --out`` (scenario folders with a demo metrics.json, or
    a DDPM / text-to-image demo's metrics.json)."""
    folder = Path(folder)
    return folder.is_dir() and (any(_demo_scan(folder)) or _generation_demo(folder) is not None)


def _mean_std(values: list[float]) -> str:
    import statistics

    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def demo_report(folders: Sequence[str | Path]) -> str:
    """Markdown tables of one or more demo folders: per scenario, mean ± std (sample std) over
    the seeds found (each folder one ``salun demo --seed S`` run), rows in the demo's order.
    Rows whose model collapsed on a seed (:func:`collapsed`) are marked † with a footnote."""
    from salun.core.catalog import display_name
    from salun.core.errors import SalunError

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    unreadable: list[str] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise SalunError(f"folder {str(folder)!r} does not exist")
        results, problems = _demo_scan(folder)
        unreadable += [f"{folder / name}: {problem}" for name, problem in problems]
        generation = _generation_demo(folder)
        if generation is not None and not results and not problems:
            if len(folders) > 1:
                raise SalunError(
                    f"{str(folder)!r} is a generation demo; combining seeds is for the "
                    "classification demo (salun demo --seed S)"
                )
            return generation_demo_table(generation)
        if not results and problems:
            name, problem = problems[0]
            raise SalunError(f"{str(folder)!r} holds no readable demo results: {name}: {problem}")
        if not results:
            raise SalunError(
                f"{str(folder)!r} holds no demo results (DIR/SCENARIO/metrics.json); "
                f"run 'salun demo --out {folder}' first, or give a bench folder alone"
            )
        for r in results:
            groups.setdefault((r.get("dataset", "?"), r["scenario"]), []).append(r)
    columns = ("UA", "MIA-Efficacy", "RA", "TA", "Avg. Gap", "RTE (s)")
    parts = []
    for (dataset, _), runs in groups.items():
        runs = sorted(runs, key=lambda r: r.get("seed", 0))
        seeds = [r.get("seed") for r in runs]
        k = NUM_CLASSES.get(dataset, 10)
        names: list[str] = []
        for r in runs:
            for row in r["rows"]:
                if row["name"] not in names:
                    names.append(row["name"])
        acc = _mean_std([r["original"]["info"].get("train_acc", math.nan) for r in runs])
        title = runs[0]["title"] if len(runs) == 1 else _scenario_title(runs[0], seeds)
        lines = [f"## {title}", ""]
        if len(runs) > 1:
            lines += [f"Original train acc {acc} %.", ""]
        lines += [
            "| method | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        any_collapsed = False
        for name in names:
            rows = [(r.get("seed"), row) for r in runs for row in r["rows"] if row["name"] == name]
            bad = [
                s
                for s, row in rows
                if name not in ("Retrain", "Retrain' (noise floor)") and collapsed(row, k)
            ]
            cells = [_mean_std([row.get(c, math.nan) for _, row in rows]) for c in columns]
            label = display_name(name)
            if bad:
                any_collapsed = True
                label += f" † (seed {', '.join(str(s) for s in bad)})"
            n = f" (n={len(rows)})" if len(rows) != len(runs) else ""
            lines.append(f"| {label}{n} | " + " | ".join(cells) + " |")
        if len(runs) > 1:
            lines += [
                "",
                f"Mean ± sample std over seeds {seeds}; Avg. Gap per seed, then averaged.",
            ]
        if any_collapsed:
            lines += ["", collapse_note(k)]
        parts.append("\n".join(lines))
    if unreadable:
        parts.append(
            "\n".join(["## Missing or unreadable runs", "", *(f"- {u}" for u in unreadable)])
        )
    return "\n\n".join(parts) + "\n"


def _scenario_title(r: dict[str, Any], seeds: list[Any]) -> str:
    scenario = r["scenario"]
    what = "random forgetting" if scenario == "random" else "class-wise forgetting"
    sizes = r.get("sizes", {})
    if scenario == "random" and sizes.get("train") and sizes.get("forget") is not None:
        what = f"random {100 * sizes['forget'] / sizes['train']:.0f} % forgetting"
    forgotten = r.get("forget_class_name")
    if scenario == "class" and forgotten:
        what += f" (class {forgotten})"
    return f"{r.get('dataset', '?')}, {what} ({len(seeds)} seeds: {seeds})"
