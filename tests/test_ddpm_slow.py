"""The DDPM demo's claim on digits: SalUn erases the digit (UA >= 95 %) while the other digits'
judged accuracy stays within 5 points of the original model. Trains a real DDPM (minutes)."""

import json

import pytest

from salun.demos.ddpm_demo import DDPM_DEMO_METHODS, run_ddpm_demo

pytestmark = [pytest.mark.slow, pytest.mark.diffusion]


def test_salun_erases_one_digit_and_keeps_the_others(tmp_path):
    r = run_ddpm_demo(
        tmp_path / "demo",
        seed=0,
        progress=False,
        overrides=[f"cache_dir={tmp_path / 'cache'}"],
        methods={"salun": DDPM_DEMO_METHODS["salun"]},
    )
    original = r["runs"]["original"]["metrics"]
    salun = r["runs"]["salun"]["metrics"]
    assert r["judge"]["test_acc"] > 95 and r["judge"]["forget_class_test_acc"] > 90
    assert original["UA"] < 10  # the original does generate the digit
    assert salun["UA"] >= 95
    assert abs(salun["other_acc"] - original["other_acc"]) <= 5
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["runs"]["salun"]["metrics"]["UA"] == salun["UA"]
    for name in ("original", "salun"):
        assert (tmp_path / "demo" / f"grid_{name}.png").is_file()
