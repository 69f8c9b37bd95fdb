"""The README runs as written: its Python API example, and every command of its shell blocks
(parsed and resolved always; the cheap ones run at smoke size; all of them literally when slow)."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its API example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    before, after = namespace["before"], namespace["after"]
    assert before["UA"] < 5 and after["UA"] > 90  # the threes are forgotten
    assert after["TA"] > before["TA"] - 10  # the other digits are kept
    assert "UA" in capsys.readouterr().out


def test_readme_shows_the_two_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo")
    assert first_block.splitlines()[1].startswith("make test")


# ---- every shell block of the README -------------------------------------------------------


ROOT = README.parents[0]
SRC = str(ROOT / "src")
CONFIG_COMMANDS = ("train", "mask", "unlearn", "eval", "bench", "tune", "config")
#: Lines the literal run cannot execute on this machine, with the reason; they are still parsed
#: and their configs resolved by the fast test.
NEEDS_MORE = {
    "salun unlearn sd-nudity": "Stable Diffusion v1.4 weights and a GPU",
    "salun unlearn sd-imagenette-class": "Stable Diffusion v1.4 weights and a GPU",
    "salun mask sd-nudity": "Stable Diffusion v1.4 weights in /models/sd-v1-4",
    "torchrun ": "several CUDA GPUs (several nodes)",
    "salun bench fmnist-random10 --out /shared/bench --executor slurm": "a SLURM cluster",
}


def readme_commands() -> list[tuple[int, str]]:
    """(block number, command) for every command line of the README's shell blocks, with
    backslash continuations joined and comments dropped."""
    text = README.read_text(encoding="utf-8")
    out = []
    for i, block in enumerate(re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S)):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append((i, " ".join(line.split())))
    return out


def _salun_argv(line: str) -> list[str] | None:
    words = shlex.split(line)
    if words[0] == "salun":
        return words[1:]
    if words[0] == "torchrun" and "-m" in words:
        i = words.index("-m")
        assert words[i + 1] == "salun", line
        return words[i + 2 :]
    return None


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def _resolve(argv: list[str]) -> None:
    """Parse argv with the real parser and resolve its config as the command would."""
    from salun.cli import _split_items, build_parser
    from salun.config import load_config

    args, extra = build_parser().parse_known_args(argv)
    assert not [e for e in extra if e.startswith("-")], f"unknown options {extra} in {argv}"
    items = [*getattr(args, "items", []), *extra]
    if args.command not in CONFIG_COMMANDS:
        return
    preset, overrides = _split_items(items)
    task = getattr(args, "task", None)
    if task is not None:
        preset = preset or {"ddpm": "demo-ddpm", "text_to_image": "demo-sd"}.get(task)
        overrides.insert(0, f"task={task}")
    import torch

    if not torch.cuda.is_available():  # the line is for a GPU machine: check all but the device
        overrides = [o for o in overrides if not o.startswith("device=cuda")]
    load_config(preset, overrides)


def test_readme_commands_parse_and_resolve():
    """Every command of every shell block: `make` targets exist, `salun` lines (also under
    torchrun) parse with the real argparse parser and their configs resolve, `python` scripts
    exist. Catches a renamed option, preset, key or a method parameter that does not apply."""
    commands = readme_commands()
    assert len(commands) >= 20
    targets = _make_targets()
    for _, line in commands:
        words = shlex.split(line)
        if words[0] == "make":
            assert set(words[1:]) <= targets, line
        elif words[0] == "python":
            assert (ROOT / words[1]).is_file(), line
        else:
            argv = _salun_argv(line)
            assert argv is not None, f"README command not checked: {line}"
            _resolve(argv)


def _run(
    line: str, cwd, extra_env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, **(extra_env or {})}
    argv = _salun_argv(line)
    assert argv is not None, line
    return subprocess.run(
        [sys.executable, "-m", "salun", *argv, "--no-progress"]
        if argv[0] not in ("list", "config", "report", "audit")
        else [sys.executable, "-m", "salun", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _smoke(line: str) -> str:
    """A README line at smoke size: `--task ddpm` lines get the documented smoke/ddpm preset."""
    words = line.split()
    if "--task" in words and words[words.index("--task") + 1] == "ddpm":
        return " ".join([*words[:2], "smoke/ddpm", *words[2:]])
    return line


def _main(line: str) -> int:
    from salun.cli import main

    argv = _salun_argv(line)
    assert argv is not None, line
    quiet = [] if argv[0] in ("list", "config", "report", "audit") else ["--no-progress"]
    return main([*argv, *quiet])


def test_readme_command_line_block_runs_at_smoke_size(tmp_path, monkeypatch, capsys):
    """The Command line block's smoke/digits lines run for real, in order, in a fresh folder
    (in this process: one torch import; the README's own sizes are the slow literal run's)."""
    monkeypatch.chdir(tmp_path)
    lines = [line for _, line in readme_commands()]
    smoke = [x for x in lines if x.startswith("salun") and ("smoke/" in x or x == "salun list")]
    assert len(smoke) >= 6
    for line in smoke:
        assert _main(line) == 0, f"{line}\n{capsys.readouterr().err[-2000:]}"
    assert (tmp_path / "runs" / "salun" / "audit.json").is_file()


def test_readme_generation_block_runs_at_smoke_size(tmp_path, monkeypatch, capsys):
    """The Generation block's salun lines, in order, on the documented smoke/ddpm preset
    (esd on a preset written for another method: its parameters must not leak)."""
    monkeypatch.chdir(tmp_path)
    lines = [line for _, line in readme_commands()]
    start = next(i for i, x in enumerate(lines) if x.startswith("salun train --task ddpm"))
    generation = [_smoke(x) for x in lines[start : start + 4]]
    assert [x.split()[1] for x in generation] == ["train", "unlearn", "sample", "eval"]
    for line in generation:
        assert _main(line) == 0, f"{line}\n{capsys.readouterr().err[-2000:]}"
    assert (tmp_path / "runs" / "samples" / "grid_esd.png").is_file()
    assert '"UA"' in capsys.readouterr().out  # eval --json
    # loading a DDPM folder says nothing about accelerate (it is not needed)
    import logging

    from salun.tasks.ddpm.ddpm_folders import load_ddpm

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    diffusers_log = logging.getLogger("diffusers")
    diffusers_log.addHandler(handler)
    try:
        load_ddpm("runs/ddpm/model")
    finally:
        diffusers_log.removeHandler(handler)
    assert not [r for r in records if "accelerate" in r.getMessage()]


#: What a README line gets appended to run at smoke size (seconds instead of minutes).
SMALL = ["data.train_subset=300", "data.test_subset=100", "train.epochs=2"]


def _smoke_size(line: str) -> str:
    """A README line at smoke size: demos on digits, benches on digits with one seed (and one
    one-epoch method unless the line sets its own grid), `--task ddpm` on smoke/ddpm; other
    sized lines (a preset's unlearn) on small subsets. Lines already at smoke size are kept."""
    words = _smoke(line).split()
    if words[:2] == ["salun", "demo"] and "--task" not in words:
        return " ".join([*words, "--dataset", "digits", *SMALL])
    if words[:2] == ["salun", "bench"]:
        extra = ["data.name=digits", *SMALL, "bench.seeds=[0]"]
        if "bench.methods" not in line:
            extra.append("bench.methods={salun: {epochs: 1}}")
        return shlex.join([*words, *extra])
    if words[:2] == ["salun", "unlearn"] and "smoke/" not in line and "--task" not in words:
        return " ".join([*words, *SMALL])
    return " ".join(words)


@pytest.mark.slow
def test_readme_every_block_runs_at_smoke_size(tmp_path, monkeypatch, capsys):
    """Every README block's salun lines, in README order, in one fresh folder, each at smoke
    size (`_smoke_size`): the demos and their report, the command line, the benches and their
    report, the DDPM lines. Lines needing hardware or weights not here (NEEDS_MORE) are parsed
    and resolved by the fast test only. A few minutes on 2 cores."""
    monkeypatch.chdir(tmp_path)
    ran = []
    for _, line in readme_commands():
        if not line.startswith("salun ") or any(line.startswith(k) for k in NEEDS_MORE):
            continue
        small = _smoke_size(line)
        assert _main(small) == 0, f"{small}\n{capsys.readouterr().err[-2000:]}"
        ran.append(small)
    out = capsys.readouterr().out
    assert len(ran) >= 20, ran
    assert (tmp_path / "runs" / "fmnist-classwise" / "report.md").is_file()
    assert (tmp_path / "runs" / "sweep" / "report.md").is_file()
    assert (tmp_path / "runs" / "rl-trouser" / "metrics.json").is_file()
    assert "mean ± std" in out or "±" in out  # salun report over the three demo seeds


@pytest.mark.slow
def test_readme_blocks_run_literally(tmp_path):
    """Every README shell line as written, in order, in a fresh folder (hours on 2 cores: the
    benches and demos run at their documented sizes). `make` lines are covered by the lines
    they stand for; lines needing hardware or weights not here are listed in NEEDS_MORE."""
    times = []
    for i, (_, line) in enumerate(readme_commands()):
        if line.startswith("make ") or any(line.startswith(k) for k in NEEDS_MORE):
            continue
        t0 = time.perf_counter()
        r = _run(line, tmp_path, timeout=4 * 3600)  # a bench at its documented size: ~30 min
        times.append((line, time.perf_counter() - t0))
        # each line's output stays beside its results (pytest --basetemp=DIR keeps them)
        (tmp_path / f"readme-line-{i:02d}.log").write_text(
            f"$ {line}\n{r.stdout}\n--- stderr ---\n{r.stderr}", encoding="utf-8"
        )
        assert r.returncode == 0, f"{line}\n{r.stderr[-2000:]}"
    print("\n".join(f"{s:8.1f} s  {line}" for line, s in times))
