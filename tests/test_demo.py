"""The demo: the digits fallback at a small size in the fast suite; the full Fashion-MNIST demo
behind the slow marker (about 2.5 minutes on 2 cores)."""

import json
import shutil
import statistics

import pytest

from salun.cli import main
from salun.core.results import collapsed, demo_report


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
    # progress on stdout, one display name per method, the class named, the methods listed
    assert "scenario 1/1, class-wise forgetting (class 0, 0): training the original" in printed
    assert "unlearning with SalUn (5/5)" in printed
    assert [r["name"] for r in m["rows"][3:]] == ["FT", "GA", "RL", "l1-sparse", "SalUn"]
    assert "(class 0, 0)" in m["title"]
    config = (folder / "config.yaml").read_text()
    assert all(f"unlearn.method={n} " in config for n in m["methods"])
    report = (folder / "report.md").read_text()
    assert "**RA**" in report and "ZRF" not in report  # defines only what its tables show
    assert "‡" not in printed  # a fresh cache: every model trained by this run
    _check_report_of_demo_folders(out, tmp_path, m, capsys)
    # again on the same cache: Retrain and Retrain' come from it, and their RTE is marked
    args = ["demo", "--dataset", "digits", "--out", str(tmp_path / "again"), "--no-progress"]
    args += ["data.train_subset=500", "data.test_subset=200", "train.epochs=6"]
    assert main([*args, f"cache_dir={tmp_path / 'cache'}"]) == 0
    printed = capsys.readouterr().out
    assert "| Retrain ‡ |" in printed and "| Retrain' (noise floor) ‡ |" in printed
    assert (
        "‡ loaded from the cache"
        in (tmp_path / "again" / "digits-class-seed0" / "report.md").read_text()
    )


def _check_report_of_demo_folders(out, tmp_path, m, capsys):
    """salun report on one demo folder reprints its table; on several it combines the seeds
    (mean ± sample std) and flags a collapsed row."""
    assert main(["report", str(out)]) == 0
    again = capsys.readouterr().out
    assert "| Retrain |" in again and "| SalUn |" in again
    # a second "seed": the same run with other numbers, GA collapsed to chance
    other = tmp_path / "demo-s1" / "digits-class-seed1"
    shutil.copytree(out / "digits-class-seed0", other)
    m1 = json.loads((other / "metrics.json").read_text())
    m1["seed"] = 1
    for row in m1["rows"]:
        row["UA"] = max(0.0, row["UA"] - 10)
        if row["name"] == "GA":
            row["RA"], row["TA"] = 12.0, 11.0
    (other / "metrics.json").write_text(json.dumps(m1))
    assert main(["report", str(out), str(tmp_path / "demo-s1")]) == 0
    text = capsys.readouterr().out
    assert "(2 seeds: [0, 1])" in text
    salun0 = next(r for r in m["rows"] if r["name"] == "SalUn")["UA"]
    salun1 = next(r for r in m1["rows"] if r["name"] == "SalUn")["UA"]
    mean, std = statistics.fmean([salun0, salun1]), statistics.stdev([salun0, salun1])
    line = next(x for x in text.splitlines() if x.startswith("| SalUn"))
    assert line.split("|")[2].strip() == f"{mean:.2f} ± {std:.2f}"
    ga = next(x for x in text.splitlines() if x.startswith("| GA"))
    assert "† (seed 1)" in ga and "collapsed" in text
    assert demo_report([out]) != text  # one folder: no combination
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_collapsed_flags_chance_level_accuracy():
    assert collapsed({"RA": 12.0, "TA": 80.0}, 10)  # RA within 10 points of chance (10 %)
    assert collapsed({"RA": 90.0, "TA": 19.9}, 10)
    assert not collapsed({"RA": 55.0, "TA": 53.0}, 10)
    assert not collapsed({"RA": 12.0, "TA": 12.0}, 100)  # chance is 1 % for 100 classes


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
    rows = {r.get("method", r["name"]): r for r in cls["rows"]}
    assert cls["original"]["info"]["train_acc"] > 97  # the memorising regime
    assert rows["salun"]["UA"] >= 95 and rows["salun"]["Avg. Gap"] < 5
    assert rows["salun"]["Avg. Gap"] < rows["Original (do nothing)"]["Avg. Gap"]
    rnd = json.loads((out / "fashion-mnist-random-seed0" / "metrics.json").read_text())
    assert 0 < rnd["retrain"]["metrics"]["UA"] < 30
