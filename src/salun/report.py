"""Readable results: Markdown tables and a PNG bar chart of gaps to Retrain."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salun.io import save_figure

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
    """Grouped bars of |method - Retrain| per metric, plus the Avg. Gap, one group a method."""
    from matplotlib.figure import Figure

    metrics = ["UA", "MIA-Efficacy", "RA", "TA", "Avg. Gap"]
    rows = [r for r in rows if r.get("gaps")]
    fig = Figure(figsize=(1.4 + 1.3 * max(len(rows), 1), 3.6), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["gaps"].get(m, 0.0) for r in rows], width, label=m)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=20)
    ax.set_ylabel("|method - Retrain| (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    save_figure(path, lambda p: fig.savefig(p, format="png"))
