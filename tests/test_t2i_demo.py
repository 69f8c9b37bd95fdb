"""The offline text-to-image demo at smoke size: held-out paraphrases, outputs, the cache."""

import json

import pytest

from salun.core.errors import SalunError
from salun.demos.text_to_image_demo import (
    HELD_OUT_TEMPLATES,
    TRAIN_TEMPLATES,
    eval_templates,
    run_t2i_demo,
)

pytestmark = pytest.mark.diffusion

SMOKE = {
    "vae_epochs": 1,
    "unet_epochs": 1,
    "judge_epochs": 1,
    "samples": 2,
    "train_limit": 64,
}
METHODS = {
    "salun": {"form": "paper", "optimizer": "adam", "lr": 1e-4, "epochs": 1, "batch_size": 4},
    "esd": {"optimizer": "adam", "lr": 1e-4, "epochs": 1, "batch_size": 4, "train": "xattn"},
}


def test_paraphrases_are_held_out_of_training():
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    assert len(HELD_OUT_TEMPLATES) >= 3
    tpls = eval_templates("a photo of the digit {}")
    assert tpls[0] == "a photo of the digit {}" and tpls[1:] == HELD_OUT_TEMPLATES
    with pytest.raises(SalunError, match="not a training caption"):
        eval_templates(HELD_OUT_TEMPLATES[0])


def test_smoke_demo_writes_tables_grids_and_reuses_the_cached_pipeline(tmp_path):
    over = [
        f"cache_dir={tmp_path / 'cache'}",
        "text_to_image.forget_size=4",
        "text_to_image.retain_size=8",
        "text_to_image.steps=2",
        "text_to_image.generate_batch_size=8",
    ]
    first = run_t2i_demo(
        tmp_path / "a", progress=False, overrides=over, settings=SMOKE, methods=METHODS
    )
    assert first["original"]["cache_hit"] is False
    assert [r for r in first["scores"]] == ["original", "salun", "esd"]
    for scores in first["scores"].values():
        assert set(scores) == set(eval_templates(first["caption"]))
        for s in scores.values():
            assert 0 <= s["UA"] <= 100 and len(s["per_class_acc"]) == 10
    report = (tmp_path / "a" / "report.md").read_text()
    assert "held-out paraphrases never seen in training" in report
    assert all(tpl in report for tpl in HELD_OUT_TEMPLATES)
    for name in ("original", "salun", "esd"):
        assert (tmp_path / "a" / f"grid_{name}.png").stat().st_size > 0
        assert (tmp_path / "a" / f"grid_{name}_paraphrases.png").stat().st_size > 0
    assert (tmp_path / "a" / "original" / "model_index.json").is_file()
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["held_out_paraphrases"] == list(HELD_OUT_TEMPLATES)

    second = run_t2i_demo(
        tmp_path / "b",
        progress=False,
        overrides=over,
        settings=SMOKE,
        methods={"esd": METHODS["esd"]},
    )
    assert second["original"]["cache_hit"] is True
    assert "loaded from cache" in (tmp_path / "b" / "report.md").read_text()
    # the same pipeline, the same noise: the original's scores are reproduced from the cache
    assert second["scores"]["original"] == first["scores"]["original"]
    assert second["judge_test_acc"] == pytest.approx(first["judge_test_acc"])
