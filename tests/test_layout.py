"""The folder layout shows the architecture (issue 19): the root of the package holds only the
entrances and the pipeline, every task is one package under ``salun/tasks/``, no two modules
share a base name, no source file is over 500 lines, and no task package imports another."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "salun"

# the entrances (Python API, ``python -m salun``) and the pipeline (run.py: the run for any task;
# experiment.py: the cached trainer and run-folder writer the tasks use); the CLI is a package
ROOT_MODULES = {"__init__.py", "__main__.py", "api.py", "run.py", "experiment.py"}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_root_holds_only_the_entrances_and_the_pipeline():
    found = {p.name for p in PKG.glob("*.py")}
    assert found == ROOT_MODULES, f"unexpected root modules: {sorted(found - ROOT_MODULES)}"


def test_no_two_modules_share_a_base_name():
    stems = Counter(p.stem for p in _modules() if p.stem not in {"__init__", "__main__"})
    assert not [s for s, n in stems.items() if n > 1], stems.most_common(5)


def test_no_source_file_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def _task_packages() -> list[Path]:
    return sorted(p.parent for p in (PKG / "tasks").glob("*/__init__.py"))


def test_every_registered_task_is_one_package():
    from salun.core.registry import TASKS

    folders = {p.name for p in _task_packages()}
    for name in TASKS.names():
        module = TASKS.get(name).__module__
        if not module.startswith("salun."):
            continue  # a user's task (tests register one)
        assert module == f"salun.tasks.{name}.{name}_task", (name, module)
        assert name in folders
    for folder in _task_packages():
        assert (folder / f"{folder.name}_task.py").is_file(), folder
        assert (folder / f"{folder.name}_objective.py").is_file(), folder


def test_every_task_package_is_in_the_independence_contract():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib needs Python 3.11
    blocks = re.findall(r'type = "independence"\s*\nmodules = \[(.*?)\]', text, re.S)
    assert blocks, "pyproject.toml has no independence contract"
    listed = {m for block in blocks for m in re.findall(r'"([\w.]+)"', block)}
    packages = {f"salun.tasks.{p.name}" for p in _task_packages()}
    assert packages <= listed, sorted(packages - listed)


@pytest.mark.parametrize("folder", _task_packages(), ids=lambda p: p.name)
def test_a_task_package_imports_no_other_task_package(folder):
    """The independence contract, also read from the source (imports inside functions too)."""
    others = {f"salun.tasks.{p.name}" for p in _task_packages()} - {f"salun.tasks.{folder.name}"}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not any(name == o or name.startswith(o + ".") for o in others), (
                    path.name,
                    name,
                )
