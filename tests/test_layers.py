"""The import layers of issue 11 hold: `lint-imports` (import-linter, contracts in
pyproject.toml) passes, and the pipeline and the CLI never name a task."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([exe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_pipeline_and_cli_never_name_a_task():
    for path in (ROOT / "src/salun/run.py", *sorted((ROOT / "src/salun/cli").glob("*.py"))):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r'"(ddpm|text_to_image)"', text), path.name
