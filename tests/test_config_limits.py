"""Config, YAML, bench and tune inputs (issue 20): numbers too large, null sections, YAML
limits (size, depth, aliases, duplicate keys, tags), bench timeouts, grid size and tuning
seeds. Each is one line on stderr and exit code 2, checked before work starts (the limits of
salun.core.limits), and no output folder is created. The CLI runs in-process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from salun.bench.tune import candidates
from salun.cli import main
from salun.config import dump_yaml, load_config, read_yaml
from salun.core.errors import SalunError
from salun.core.limits import MAX_CONFIG_BYTES, MAX_GRID_RUNS, MAX_YAML_DEPTH
from salun.methods import get_method

BIG = "9" * 400  # a 400-digit integer


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository, whatever goes wrong


def one_line(argv: list[str], capsys, want: str) -> str:
    """Run the CLI: exit 2, exactly one stderr line containing ``want``, no ``out`` folder."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("salun: error: ") and want in lines[0], lines[0]
    assert not Path("out").exists()
    return lines[0]


def train(*items: str) -> list[str]:
    return ["train", *items, "cache_dir=cache", "--out", "out"]


# -- numbers too large --------------------------------------------------------------------------


def test_huge_integer_lr_train(capsys):
    line = one_line(train("smoke/digits", f"train.lr={BIG}"), capsys, "train.lr must be a finite")
    assert "integer of 400 digits" in line


def test_huge_integer_lr_unlearn(capsys):
    argv = ["unlearn", "smoke/digits", f"unlearn.params.lr={BIG}", "cache_dir=cache"]
    one_line([*argv, "--out", "out"], capsys, "unlearn.params.lr must be a finite number")


@pytest.mark.parametrize("key", ["model.width", "train.batch_size", "runtime.checkpoint_every"])
def test_integer_field_beyond_int64(key, capsys):
    one_line(train("smoke/digits", f"{key}={2**70}"), capsys, f"{key} must be an integer in")


def test_huge_seed_names_the_seed_range(capsys):
    one_line(train("smoke/digits", f"seed={BIG}"), capsys, "seed must be an integer in 0..")


def test_integer_beyond_python_str_limit(capsys):
    # int("9" * 5000) raises ValueError inside the YAML constructor
    one_line(train("smoke/digits", "train.epochs=" + "9" * 5000), capsys, "5000 characters")


def test_method_parameter_overflow_api():
    with pytest.raises(SalunError, match="ga.lr must be a finite number"):
        get_method("ga", lr=10**400)
    with pytest.raises(SalunError, match="ga.epochs must be an integer in"):
        get_method("ga", epochs=2**64)


# -- null sections ------------------------------------------------------------------------------

SECTIONS = [
    "data",
    "model",
    "train",
    "mask",
    "unlearn",
    "eval",
    "diffusion",
    "text_to_image",
    "runtime",
]


@pytest.mark.parametrize("section", SECTIONS)
def test_null_section_is_refused(section, capsys):
    one_line(train("smoke/digits", f"{section}=null"), capsys, f"{section} must be a mapping")


def test_null_section_in_a_file_is_refused(capsys):
    Path("c.yaml").write_text("data:\nmodel: {name: cnn}\n")
    one_line(train("c.yaml"), capsys, "data must be a mapping, got null")


def test_null_retrain_and_bench_keep_their_meaning():
    cfg = load_config("smoke/digits", ["retrain=null", "bench=null"])
    assert cfg.retrain is None and cfg.bench is None


# -- YAML limits --------------------------------------------------------------------------------


def fast_one_line(argv, capsys, want):
    start = time.perf_counter()
    line = one_line(argv, capsys, want)
    assert time.perf_counter() - start < 2.0
    return line


def test_recursive_alias_in_unlearn_params(capsys):
    Path("c.yaml").write_text("unlearn:\n  method: ga\n  params: &p\n    lr: *p\n")
    fast_one_line(train("c.yaml"), capsys, "uses the YAML anchor &p at line 3")


def test_alias_bomb_in_unlearn_params(capsys):
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "unlearn:\n  method: ga\n  params:\n" + "".join(f"    {r}\n" for r in rows)
    Path("c.yaml").write_text(text)
    fast_one_line(train("c.yaml"), capsys, "anchors and aliases are not allowed")


def test_alias_in_an_override(capsys):
    fast_one_line(train("smoke/digits", "unlearn.params=&a [*a]"), capsys, "anchor &a")


def test_deeply_nested_list(capsys):
    text = "unlearn:\n  params:\n    lr: " + "[" * 10_000 + "]" * 10_000 + "\n"
    Path("c.yaml").write_text(text)
    fast_one_line(train("c.yaml"), capsys, f"more than {MAX_YAML_DEPTH} levels deep")


def test_deeply_nested_override(capsys):
    value = "[" * 10_000 + "]" * 10_000
    fast_one_line(train("smoke/digits", f"unlearn.params.lr={value}"), capsys, "levels deep")


def test_nesting_at_the_limit_is_read():
    depth = MAX_YAML_DEPTH - 1  # the document's mapping is one level
    assert read_yaml("a: " + "[" * depth + "]" * depth, "x") is not None


def test_big_config_file_is_refused_before_reading(capsys):
    with open("big.yaml", "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB that stat reports at once
    fast_one_line(train("big.yaml"), capsys, f"the limit is {MAX_CONFIG_BYTES:,} bytes")


def test_big_override_value_is_refused(capsys):
    value = "[" + "1, " * (MAX_CONFIG_BYTES // 3 + 1) + "1]"
    fast_one_line(train("smoke/digits", f"train.milestones={value}"), capsys, "the limit is")


def test_duplicate_top_level_section(capsys):
    Path("c.yaml").write_text("data:\n  name: digits\nmodel: {width: 8}\ndata:\n  name: fmnist\n")
    one_line(train("c.yaml"), capsys, "gives the key 'data' twice (lines 1 and 4)")


def test_duplicate_nested_key(capsys):
    Path("c.yaml").write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    one_line(train("c.yaml"), capsys, "gives the key 'lr' twice (lines 2 and 4)")


def test_duplicate_key_in_an_override(capsys):
    one_line(train("smoke/digits", "unlearn.params={lr: 1, lr: 2}"), capsys, "key 'lr' twice")


def test_shipped_presets_read_within_the_limits():
    from importlib import resources

    from salun.config import preset_names

    root = resources.files("salun.config") / "presets"
    for name in preset_names():  # (tests/test_config.py loads and validates each one)
        assert isinstance(read_yaml((root / f"{name}.yaml").read_text(), name), dict)


def test_written_yaml_has_no_aliases_and_reads_back():
    shared = [1, 2]
    text = dump_yaml({"a": shared, "b": shared})
    assert "&" not in text and read_yaml(text, "x") == {"a": [1, 2], "b": [1, 2]}


# -- bench and tune -----------------------------------------------------------------------------


def bench(*extra: str) -> list[str]:
    return ["bench", "digits-random10", "cache_dir=cache", "--out", "out", *extra]


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_bench_timeout_must_be_positive_and_finite(value, capsys):
    one_line(bench("--timeout", value), capsys, "--timeout must be a finite number of seconds")


def test_cluster_arg_with_a_yaml_tag(capsys):
    line = one_line(
        bench("--executor", "local", "--cluster-arg", "x=!!python/name:os.system"),
        capsys,
        "--cluster-arg 'x=!!python/name:os.system' is not valid YAML",
    )
    assert "could not determine a constructor" in line


def test_grid_of_millions_refused_before_expanding(capsys):
    lrs = ", ".join(f"0.{i:04d}1" for i in range(1600))
    epochs = ", ".join(str(i + 1) for i in range(1600))
    Path("g.yaml").write_text(
        "data: {name: digits, image_size: 16, train_subset: 600, test_subset: 200}\n"
        f"bench:\n  seeds: [0]\n  methods:\n    ft: {{lr: [{lrs}], epochs: [{epochs}]}}\n"
    )
    line = fast_one_line(
        ["bench", "g.yaml", "cache_dir=cache", "--out", "out"], capsys, "bench grid has 2,560,003"
    )
    assert f"the limit is {MAX_GRID_RUNS:,}" in line


def test_tune_seeds_must_be_integers(capsys):
    one_line(
        ["tune", "digits-random10", "--seeds", "100,a", "--out", "out"],
        capsys,
        "--seeds item 'a' is not a seed",
    )


def test_random_search_samples_without_expanding():
    space = {"lr": [float(i) for i in range(1000)], "epochs": list(range(1000)), "x": [1, 2]}
    start = time.perf_counter()
    picked = candidates(space, "random", 5, seed=0)
    assert time.perf_counter() - start < 1.0 and len(picked) == 5
    small = {"lr": [0.1, 0.2, 0.3], "epochs": [1, 2]}  # the same picks as before (expanded)
    import random

    from salun.bench.grid import _expand_params

    assert candidates(small, "random", 4, seed=3) == random.Random(3).sample(
        _expand_params(small), k=4
    )
    with pytest.raises(SalunError, match="grid of 2,000,000 candidates exceeds the limit"):
        candidates(space, "grid", None, seed=0)


def test_a_long_override_is_quoted_short(capsys):
    value = "[" * 1000 + "]" * 1000
    line = one_line(train("smoke/digits", f"train.milestones={value}"), capsys, "levels deep")
    assert len(line) < 300 and "(2,017 characters)" in line
