"""The scenario-matrix script at its smoke size (digits, two cells in parallel)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scenario_matrix_smoke(tmp_path):
    out = tmp_path / "matrix"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scenario_matrix.py"), "--size", "smoke"]
    proc = subprocess.run(
        [*cmd, "--jobs", "2", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "matrix.md").read_text()
    for row in ("Retrain' (floor)", "do nothing", "SalUn", "SCRUB", "NegGrad+", "Spearman"):
        assert row in text
    assert "PASS" in text or "MISS" in text
    payload = json.loads((out / "matrix.json").read_text())
    assert len(payload["cells"]) == 2 and not payload["failed"]
    # originals are trained once per seed: both cells share the seed's cache
    originals = list((out / "cache" / "seed0").glob("original-*.safetensors"))
    assert len(originals) == 1
    for cell in payload["cells"]:
        assert set(cell["rows"]) >= {"retrain_prime", "original", "salun", "rl", "ft"}
        assert cell["rows"]["salun"]["estimate"] is not None
        assert cell["diffusers_imported"] is False  # the GPU machine has no diffusers
