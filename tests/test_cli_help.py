"""The CLI explains itself: every subcommand has a description and an example, every option a
help text; `salun list` imports no torch; preset method parameters never leak to another method."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from salun.cli import build_parser, main
from salun.config import load_config
from salun.core.errors import SalunError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_has_description_example_and_option_help():
    parser = build_parser()
    assert parser.description.endswith(".") and "``" not in parser.description
    subs = _subparsers(parser)
    assert len(subs) >= 12
    missing = []
    for name, p in subs.items():
        if not p.description or "``" in p.description:
            missing.append(f"{name}: description")
        if not p.epilog or f"salun {name}" not in p.epilog:
            missing.append(f"{name}: example")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help or not action.help.strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    for action in parser._actions:
        assert action.help, action.option_strings


def test_help_renders_for_every_subcommand(capsys):
    for name in _subparsers(build_parser()):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"salun {name}" in out


def test_list_is_torch_free_and_shows_allowed_values(capsys):
    code = (
        "import sys; from salun.cli import main; rc = main(['list']); "
        "print('TORCH' if 'torch' in sys.modules else 'no-torch', rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert r.stdout.strip().endswith("no-torch 0")
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    assert "ddpm-methods" in capsys.readouterr().out
    assert main(["list", "methods", "--long"]) == 0
    assert "SalUn" in capsys.readouterr().out


def test_config_task_ddpm_and_sections(capsys):
    assert main(["config", "--task", "ddpm"]) == 0
    out = capsys.readouterr().out
    assert "task: ddpm" in out and "\ndiffusion:" in out and "\ntext_to_image:" not in out
    assert main(["config", "smoke/digits"]) == 0
    out = capsys.readouterr().out
    assert "\ndiffusion:" not in out and "\ntext_to_image:" not in out


def test_preset_params_do_not_leak_to_another_method(caplog):
    base = load_config("demo-ddpm", ["task=ddpm"])
    assert "form" in base.unlearn.params  # the preset's SalUn parameters
    with caplog.at_level("INFO", logger="salun.config"):
        cfg = load_config("demo-ddpm", ["task=ddpm", "unlearn.method=esd"])
    assert cfg.unlearn.method == "esd" and cfg.unlearn.params == {}
    assert "dropping the preset's unlearn.params of salun" in caplog.text
    cfg = load_config("demo-ddpm", ["task=ddpm", "unlearn.method=rl", "unlearn.params.lr=0.1"])
    assert cfg.unlearn.params == {"lr": 0.1}
    # the same method keeps the preset's parameters
    cfg = load_config("demo-ddpm", ["task=ddpm", "unlearn.method=salun"])
    assert cfg.unlearn.params["form"] == "reference"
    # a parameter the user gives for the wrong method stays a one-line error
    with pytest.raises(SalunError, match="unknown parameter of method 'esd' 'form'"):
        load_config("demo-ddpm", ["task=ddpm", "unlearn.method=esd", "unlearn.params.form=paper"])
