"""Packaging facts a user relies on: one version everywhere, a licence file, typed package."""

import re
from pathlib import Path

import salun

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_licence_and_py_typed():
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^version: (\S+)$", cff, re.M).group(1) == salun.__version__
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (ROOT / "src/salun/py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject  # the version is written once, in salun/__init__


def test_import_salun_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, salun, salun.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
