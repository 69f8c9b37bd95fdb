"""The demo: the digits fallback at a small size in the fast suite; the full Fashion-MNIST demo
behind the slow marker (about 2.5 minutes on 2 cores)."""

import json

import pytest

from salun.cli import main


def test_demo_digits_fallback_small(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--dataset",
            "digits",
            "--out",
            str(out),
            "--no-progress",
            "data.train_subset=500",
            "data.test_subset=200",
            "train.epochs=6",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Retrain |" in printed and "| Original (do nothing) |" in printed
    folder = out / "digits-class-seed0"
    for name in ("report.md", "metrics.json", "gaps.png", "config.yaml", "split.json", "log.txt"):
        assert (folder / name).is_file(), name
    m = json.loads((folder / "metrics.json").read_text())
    assert set(m["methods"]) == {"ft", "ga", "rl", "l1_sparse", "salun"}
    assert m["retrain"]["metrics"]["UA"] == 100.0  # class-wise: Retrain never saw the class


@pytest.mark.slow
def test_full_demo_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--dataset",
                "fashion-mnist",
                "--out",
                str(out),
                "--no-progress",
                f"cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 0
    )
    cls = json.loads((out / "fashion-mnist-class-seed0" / "metrics.json").read_text())
    rows = {r["name"]: r for r in cls["rows"]}
    assert cls["original"]["info"]["train_acc"] > 97  # the memorising regime
    assert rows["salun"]["UA"] >= 95 and rows["salun"]["Avg. Gap"] < 5
    assert rows["salun"]["Avg. Gap"] < rows["Original (do nothing)"]["Avg. Gap"]
    rnd = json.loads((out / "fashion-mnist-random-seed0" / "metrics.json").read_text())
    assert 0 < rnd["retrain"]["metrics"]["UA"] < 30
