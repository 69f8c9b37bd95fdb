"""The one cached trainer: a second run says where its model came from; --retrain replaces it."""

from __future__ import annotations

from pathlib import Path

from salun.cli import main
from salun.experiment import set_refresh

SMOKE = ["smoke/digits-random", "train.epochs=1", "threads=1"]


def test_cache_hit_is_reported_and_retrain_replaces_the_entry(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = [*SMOKE, f"cache_dir={cache}", "--no-progress"]
    try:
        assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
        first = capsys.readouterr().out
        assert "loaded from cache" not in first
        (entry,) = cache.glob("original-*.safetensors")
        before = entry.stat().st_mtime_ns

        assert main(["train", *args, "--out", str(tmp_path / "b")]) == 0
        second = capsys.readouterr().out
        assert f"original: loaded from cache {entry}" in second
        assert "(trained in " in second
        assert entry.stat().st_mtime_ns == before

        assert main(["train", *args, "--retrain", "--out", str(tmp_path / "c")]) == 0
        third = capsys.readouterr().out
        assert "loaded from cache" not in third
        assert entry.stat().st_mtime_ns != before  # trained again, entry replaced
        assert [p.name for p in cache.glob("original-*.safetensors")] == [entry.name]
        assert Path(tmp_path / "c" / "model.safetensors").is_file()
    finally:
        set_refresh(False)
