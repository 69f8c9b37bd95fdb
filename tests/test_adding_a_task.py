"""docs/adding-a-task.md, followed literally: its code blocks run in order (the first one as a
module of its own, as a user's file would be), then the pipeline runs on the toy task."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-task.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def toy_task():
    from salun.core.registry import TASKS

    yield
    TASKS._items.pop("toy-probe", None)  # the registry is process-wide
    sys.modules.pop("toy_probe_task", None)


def test_the_steps_add_a_task_the_pipeline_runs(tmp_path, toy_task):
    blocks = _blocks()
    assert len(blocks) == 3, "the page has three steps with code"
    module = types.ModuleType("toy_probe_task")
    sys.modules[module.__name__] = module
    exec(compile(blocks[0], "adding-a-task step 1", "exec"), module.__dict__)  # noqa: S102
    scope: dict = {"OUT": str(tmp_path), "print": lambda *a: None}
    for i, code in enumerate(blocks[1:], start=2):
        exec(compile(code, f"adding-a-task step {i}", "exec"), scope)  # noqa: S102
    result = scope["result"]
    assert set(result["metrics"]) == {"UA", "RA", "TA"}
    assert result["task"] == "toy-probe"
    assert result["original"]["metrics"]["RA"] > 50  # the probe learned the digits
    run = tmp_path / "toy-run"
    for name in ("config.yaml", "split.json", "model.safetensors", "metrics.json", "audit.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["metrics"] == result["metrics"]
    assert not list(tmp_path.glob(".toy-run.partial-*"))  # staged folder renamed, none left

    from salun.cli import main

    assert main(["list", "tasks"]) == 0


def test_a_task_check_runs_before_any_compute(tmp_path, toy_task):
    from salun.config import load_config
    from salun.core.errors import SalunError

    module = types.ModuleType("toy_probe_task")
    sys.modules[module.__name__] = module
    exec(compile(_blocks()[0], "adding-a-task step 1", "exec"), module.__dict__)  # noqa: S102
    with pytest.raises(SalunError, match="toy-probe forgets random examples"):
        load_config(
            "smoke/digits-random", ["task=toy-probe", "data.scenario=class", "data.forget_class=1"]
        )
    with pytest.raises(SalunError, match="does not support task 'toy-probe'"):
        load_config("smoke/digits-random", ["task=toy-probe", "unlearn.method=esd"])
