"""Reports: display names, collapsed runs flagged, gap charts drawn from the rows."""

from salun.bench.report import aggregate, markdown
from salun.core.results import gap_bar_chart


def _run(label, kind, seed, ra, ta, ua=50.0):
    return {
        "scenario": "random10",
        "seed": seed,
        "label": label,
        "kind": kind,
        "method": None if kind != "unlearn" else label,
        "dataset": "digits",
        "metrics": {"UA": ua, "MIA-Efficacy": ua, "RA": ra, "TA": ta},
        "run": {"rte_seconds": 1.0},
        "original_train_acc": 99.0,
    }


def test_bench_report_flags_collapsed_runs_and_uses_display_names():
    done = []
    for seed in (0, 1):
        done += [
            _run("retrain", "retrain", seed, 95, 90, ua=10),
            _run("original", "original", seed, 99, 91, ua=1),
            _run("salun", "unlearn", seed, 94, 89, ua=12),
            # GA collapses on seed 1: RA and TA at chance (10 % for 10 classes)
            _run("ga", "unlearn", seed, 90 if seed == 0 else 11, 85 if seed == 0 else 10, ua=90),
        ]
    table = aggregate(done)
    rows = {r["label"]: r for r in table["random10"]}
    assert rows["ga"]["collapsed_seeds"] == [1] and rows["salun"]["collapsed_seeds"] == []
    text = markdown(table, [], "t")
    assert "| GA † (seed 1) |" in text and "| SalUn |" in text and "| Original |" in text
    assert "† collapsed: RA or TA within 10 points of chance (10 % for 10 classes)" in text


def test_gap_chart_sorts_methods_and_draws_reference_lines(tmp_path, monkeypatch):
    drawn = {}
    import matplotlib.axes

    real_set_xticks = matplotlib.axes.Axes.set_xticks
    real_axhline = matplotlib.axes.Axes.axhline

    def set_xticks(self, ticks, labels=None, **kw):
        drawn["labels"] = list(labels or [])
        return real_set_xticks(self, ticks, labels, **kw)

    def axhline(self, y=0, *a, **kw):
        drawn.setdefault("lines", []).append((round(y, 2), kw.get("label")))
        return real_axhline(self, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", set_xticks)
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", axhline)

    def row(name, gap):
        return {
            "name": name,
            "gaps": {"UA": gap, "MIA-Efficacy": 0.0, "RA": gap, "TA": gap, "Avg. Gap": gap},
        }

    rows = [
        row("Retrain' (noise floor)", 0.5),
        row("Original (do nothing)", 9.0),
        row("GA", 4.0),
        row("SalUn", 1.0),
        row("FT", 2.0),
    ]
    gap_bar_chart(rows, tmp_path / "gaps.png", "t")
    assert (tmp_path / "gaps.png").stat().st_size > 1000
    assert drawn["labels"] == ["SalUn", "FT", "GA"]  # sorted by Avg. Gap, lines not bars
    labels = [lab for _, lab in drawn["lines"] if lab]
    assert any("noise floor" in lab and "0.50" in lab for lab in labels)
    assert any("do nothing" in lab and "9.00" in lab for lab in labels)


def test_report_reprints_a_generation_demo_folder(tmp_path, capsys):
    import json

    from salun.cli import main

    rows = [
        {"name": "Original", "UA": 0.0, "other-class acc": 98.7, "time (s)": 142.0},
        {"name": "SalUn", "UA": 100.0, "other-class acc": 97.6, "time (s)": 24.8},
    ]
    (tmp_path / "metrics.json").write_text(json.dumps({"title": "DDPM demo", "rows": rows}))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## DDPM demo" in out and "| SalUn | 100.00 | 97.60 | 24.80 |" in out
    (tmp_path / "metrics.json").write_text(json.dumps({"title": "SD demo", "table": "| a |"}))
    assert main(["report", str(tmp_path)]) == 0
    assert "| a |" in capsys.readouterr().out
