"""A fuzzer over every input a user controls (issue 20), with hypothesis.

Targets: ``key=value`` overrides of every config field (the fields are read from the dataclasses
in :mod:`salun.config.schema`), YAML preset files, ``split.json``, demo and bench
``metrics.json``, ``audit.json``, a DDPM folder's ``salun.json`` and ``salun sample``'s options,
a pipeline's ``model_index.json``, ``captions.csv`` and I2P prompt CSVs. Values are of the
right type and of wrong ones: huge, negative, NaN and infinite numbers, empty strings, null,
nested lists and mappings, unicode, invalid UTF-8, deep nesting.

Property: the CLI (in-process, ``main([...])``) exits 0, or exits 2 with exactly one line on
stderr; a library entry point returns or raises a one-line :class:`SalunError`. Each example
answers within a time bound and leaves no ``*.partial-*`` folder. An internal error (exit 1,
"salun: internal error: ...") is a failure: the last-resort handler does not replace the checks.

``make test`` runs a few hundred derandomized examples (the ``fast`` cases, well under a
minute). ``pytest -m slow tests/test_fuzz.py`` runs random ones, SALUN_FUZZ_EXAMPLES in all
(default 5000, about ten minutes), shared between the targets. With SALUN_FUZZ_COLLECT=FILE a
failure does not stop the run: each one is appended to FILE as a JSON line (target, input,
what happened), to list every distinct failure of a long run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from salun.cli import main
from salun.config import schema
from salun.core import catalog
from salun.core.errors import SalunError

# -- profiles -------------------------------------------------------------------------------
FAST = {  # examples per target in make test (derandomized)
    "overrides": 100,
    "params": 40,
    "preset_yaml": 40,
    "split_json": 40,
    "demo_metrics": 30,
    "bench_metrics": 25,
    "audit_json": 30,
    "ddpm_meta": 12,
    "sample_options": 12,
    "model_index": 8,
    "captions": 25,
    "i2p_csv": 40,
}
SLOW_TOTAL = int(os.environ.get("SALUN_FUZZ_EXAMPLES", "5000"))
COLLECT = os.environ.get("SALUN_FUZZ_COLLECT")
HANG_S = 20.0  # a hard bound (SIGALRM): a hang fails its example instead of the suite
PROFILES = [pytest.param("fast", id="fast"), pytest.param("slow", marks=pytest.mark.slow)]


def fuzz(
    profile: str,
    target: str,
    check: Callable[[Any], None],
    strategy,
    bound_s: float = 5.0,
    known: Sequence[Any] = (),
):
    """Run ``check`` on examples of ``strategy`` (the fast or the slow profile), the ``known``
    ones (inputs of issue 20) first; each example must answer within ``bound_s`` seconds
    (measured here rather than by hypothesis' deadline, which calls an example flaky when its
    rerun is quicker, as on a loaded machine)."""
    fast = FAST[target]
    slow = max(fast, SLOW_TOTAL * fast // sum(FAST.values()))
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if profile == "slow" else [])
    config = settings(
        max_examples=fast if profile == "fast" else slow,
        deadline=None,
        derandomize=profile == "fast",
        database=None,  # no .hypothesis folder in the repository
        phases=phases,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )

    def timed(value: Any) -> float:
        start = time.perf_counter()
        check(value)
        return time.perf_counter() - start

    def example(value: Any) -> None:
        try:
            # a slow example runs again: the first one of a target imports modules, and a
            # loaded machine stalls now and then; a slow input is slow both times
            took = timed(value)
            took = min(took, timed(value)) if took >= bound_s else took
            assert took < bound_s, (
                f"{target}: took {took:.1f} s (bound {bound_s} s): {value!r:.300}"
            )
        except AssertionError as e:
            if not COLLECT:
                raise
            with open(COLLECT, "a", encoding="utf-8") as f:
                f.write(json.dumps({"target": target, "problem": str(e)}, default=repr) + "\n")

    test = given(strategy)(example)
    for value in known:
        test = hypothesis.example(value)(test)
    config(test)()


# -- running one example --------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_bound(seconds: float = HANG_S) -> Iterator[None]:
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one example; it must hold no ``*.partial-*`` folder at the end."""
    root = Path(tempfile.mkdtemp(prefix="salun-fuzz-"))
    try:
        yield root
        partial = [p.name for p in root.rglob("*") if ".partial-" in p.name]
        assert not partial, f"partial folder left behind: {partial}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cli(argv: list[str]) -> int:
    """Run the CLI in-process: exit 0, or exit 2 with exactly one line on stderr, in time."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()  # runtime.deterministic=true
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_bound():
            rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except Hang as e:
        raise AssertionError(f"{argv!r}: {e}") from None
    finally:
        torch.use_deterministic_algorithms(deterministic)
    lines = err.getvalue().strip().splitlines()
    assert rc in (0, 2), f"{argv!r}: exit {rc}: {err.getvalue()[-2000:]}"
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("salun: error: "), (
            f"{argv!r}: exit 2 with {len(lines)} stderr lines: {err.getvalue()[-2000:]}"
        )
    return rc


def library(call: Callable[[], Any], what: str) -> Any:
    """Call a library entry point: it returns, or raises SalunError with one line, in time."""
    try:
        with time_bound():
            return call()
    except SalunError as e:
        assert "\n" not in str(e).strip(), f"{what}: a SalunError of several lines: {e}"
        return None
    except Hang as e:
        raise AssertionError(f"{what}: {e}") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise AssertionError(f"{what}: {type(e).__name__}: {first}") from e


# -- the last-resort handler (salun.cli.main) ----------------------------------------------
def _boom(*args, **kwargs):
    raise RuntimeError("boom in the validation\nsecond line " + "x" * 500)


def test_internal_error_is_one_line(monkeypatch, capsys):
    """A bug the checks miss: one line naming the exception, exit 1, no traceback."""
    monkeypatch.setattr("salun.config.presets.validate", _boom)
    assert main(["config", "smoke/digits"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("salun: internal error: RuntimeError: boom in the validation")
    assert err.rstrip().endswith("; run with --debug for the traceback")
    assert len(err) < 320  # the message is cut to ~200 characters


@pytest.mark.parametrize("how", ["flag-first", "flag-last", "env"])
def test_internal_error_traceback_with_debug(how, monkeypatch, capsys):
    """--debug (anywhere on the line) or SALUN_DEBUG=1 shows the traceback as well."""
    monkeypatch.setattr("salun.config.presets.validate", _boom)
    argv = ["config", "smoke/digits"]
    if how == "env":
        monkeypatch.setenv("SALUN_DEBUG", "1")
    argv = ["--debug", *argv] if how == "flag-first" else argv + ["--debug"] * (how != "env")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_boom" in err, err
    assert err.strip().splitlines()[-1].startswith("salun: internal error: RuntimeError: boom")


def test_debug_changes_nothing_else(capsys):
    """--debug on a good command and on bad input: the same answers as without it."""
    assert main(["config", "smoke/digits", "--debug"]) == 0
    assert "task: classification" in capsys.readouterr().out
    assert main(["--debug", "config", "smoke/digits", "train.lr=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("salun: error: "), err


@pytest.mark.parametrize("error", [RuntimeError("deep inside training"), KeyboardInterrupt()])
def test_failed_run_leaves_no_folder(error, tmp_path, monkeypatch, capsys):
    """An internal error (exit 1) or Ctrl-C (exit 130) in the middle of ``salun train``: one
    line, and neither --out nor a staged .partial-* sibling is left behind."""

    def fail(*args, **kwargs):
        assert any(".partial-" in p.name for p in tmp_path.iterdir())  # the run was staged
        raise error

    monkeypatch.setattr("salun.run.train_model", fail)
    out = tmp_path / "run"
    argv = ["train", "smoke/digits", f"cache_dir={tmp_path / 'cache'}", "--out", str(out)]
    rc = main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == (130 if isinstance(error, KeyboardInterrupt) else 1), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []


# -- values ---------------------------------------------------------------------------------
BIG = (10**400, -(10**400), 2**63, 2**64, 2**70, -(2**63) - 1, 10**20, -1, 0, 1)
FLOATS = (float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 1e-320, -0.0, 1e20, 1e30)
NAMES = (
    *catalog.METHODS,
    *catalog.MODELS,
    *catalog.DATASETS,
    *catalog.TASKS,
    *schema.SCHEDULES,
    *schema.OPTIMIZERS,
    *schema.PRECISIONS,
    *schema.SCENARIOS,
    "",
    "auto",
    "cpu",
    "concept",
    "class",
    "none",
)


def edge_values():
    """The values that break code most often: huge, negative and non-finite numbers, empty
    strings and containers, null, a boolean where a number goes."""
    return st.sampled_from([*BIG, *FLOATS, "", None, True, [], {}, "abc", "𝔘"])


def numbers():
    return st.one_of(st.integers(), st.sampled_from(BIG), st.floats(), st.sampled_from(FLOATS))


def texts():
    return st.one_of(st.text(max_size=30), st.sampled_from(NAMES), st.just(""), st.just("𝔘\u200b"))


def scalars():
    return st.one_of(st.none(), st.booleans(), numbers(), texts())


def nested():
    """JSON-like values: scalars inside lists and mappings, a few levels deep."""
    return st.recursive(
        scalars(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(), inner, max_size=4),
        max_leaves=12,
    )


def deep(depth_max: int = 3000):
    """One list or mapping nested very deep (Python's recursion limit is 1000)."""
    return st.integers(1, depth_max).map(lambda n: "[" * n + "]" * n)


def right_type(tp: Any):
    """Values of annotation ``tp`` (a schema field's type)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([right_type(a) for a in args])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(st.integers(-3, 20), st.integers(), st.sampled_from(BIG))
    if tp is float:
        return st.one_of(st.floats(-2, 2), numbers())
    if tp is str:
        return texts()
    if origin is list:
        return st.lists(right_type(args[0]), max_size=5)
    if origin is dict:
        return st.dictionaries(texts(), right_type(args[1]), max_size=4)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.fixed_dictionaries(
            {}, optional={f.name: right_type(hints[f.name]) for f in dataclasses.fields(tp)}
        )
    return nested()  # Any


def field_value(tp: Any):
    """A value for a field of type ``tp``: mostly the right type, else anything."""
    return st.one_of(right_type(tp), right_type(tp), edge_values(), nested())


def config_fields(cls: type = schema.Config, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, type) of every field and section of the config, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        out.append((path, tp))
        section = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if section:
            out += config_fields(section[0], path + ".")
    return out


FIELDS = config_fields()


def yaml_text(value: Any) -> str:
    """``value`` as the YAML an override carries (flow style, one line, NaN as .nan)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").removesuffix("\n")


def field_override():
    """``path=value`` for a random config field (or section) with a value for its type."""
    return st.sampled_from(FIELDS).flatmap(
        lambda f: field_value(f[1]).map(lambda v: f"{f[0]}={yaml_text(v)}")
    )


def raw_override():
    """``key=text`` with a random key or a random YAML text as the value."""
    keys = st.one_of(st.sampled_from([p for p, _ in FIELDS]), st.text(min_size=1, max_size=20))
    values = st.one_of(st.text(max_size=40), deep(200), st.sampled_from(["null", "~", "{}", "[]"]))
    return st.builds(lambda k, v: f"{k}={v}", keys, values).filter(lambda s: s[0] != "-")


def override_lists():
    return st.lists(st.one_of(field_override(), field_override(), raw_override()), max_size=3)


def method_params():
    """``unlearn.method=M`` and values for M's hyperparameters (unlearn.params.NAME=VALUE)."""

    def items(method: str):
        names = list(catalog.METHODS[method][2]) or ["lr"]
        one = st.builds(
            lambda n, v: f"unlearn.params.{n}={yaml_text(v)}",
            st.sampled_from(names),
            st.one_of(edge_values(), numbers(), nested()),
        )
        return st.lists(one, min_size=1, max_size=3).map(
            lambda xs: [f"unlearn.method={method}", *xs]
        )

    return st.sampled_from(sorted(catalog.METHODS)).flatmap(items)


# -- files ----------------------------------------------------------------------------------
YAML_TOKENS = (
    "data:", "train:", "unlearn:", "params:", "lr:", "  ", "    ", "- ", "? ", ": ", "&a ",
    "*a", "&b [*a, *a]", "<<: *a", "!!python/object/apply:os.system ['true']", "!!binary",
    "!!float", "|", ">", "[", "]", "{", "}", ",", "'", '"', "#", "---", "...", "%YAML 1.1",
    "null", "~", ".nan", "-.inf", "1e400", "0x7f", "0o17", "1_000", "yes", "\t", "\n", "é",
)  # fmt: skip


def encoded(texts_):
    """Text as bytes: UTF-8 mostly, sometimes Latin-1, or random bytes."""
    return st.one_of(
        texts_.map(lambda t: t.encode("utf-8")),
        texts_.map(lambda t: t.encode("latin-1", "replace")),
        st.binary(max_size=200),
    )


def config_trees():
    """A config-shaped mapping: some sections, each with random fields of random values."""
    sections = {path: right_type(tp) for path, tp in FIELDS if "." not in path}
    return st.fixed_dictionaries({}, optional=sections).flatmap(
        lambda tree: st.dictionaries(texts(), nested(), max_size=2).map(lambda x: {**tree, **x})
    )


def yaml_documents():
    dumped = config_trees().map(lambda t: yaml.safe_dump(t, allow_unicode=True))
    soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join)
    return encoded(st.one_of(dumped, dumped, soup, soup, st.text(), deep().map("a: ".__add__)))


def mutated(template: dict[str, Any], hash_fn: Callable[[Any], None] | None = None):
    """``template`` with 1-3 values (anywhere in it) replaced, deleted or retyped."""

    def paths(node: Any, at: tuple = ()) -> list[tuple]:
        out = [at]
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for k, v in items:
            out += paths(v, (*at, k))
        return out

    def apply(doc: Any, edits: list[tuple[tuple, str, Any]]) -> Any:
        for at, how, value in edits:
            if not at:
                doc = value
                continue
            node = doc
            try:
                for k in at[:-1]:
                    node = node[k]
                if how == "delete":
                    del node[at[-1]]
                else:
                    node[at[-1]] = value
            except (KeyError, IndexError, TypeError):
                pass  # an earlier edit changed the shape
        if hash_fn is not None:
            hash_fn(doc)
        return doc

    all_paths = paths(template)
    value = st.one_of(edge_values(), nested())
    edit = st.tuples(st.sampled_from(all_paths), st.sampled_from(["set", "set", "delete"]), value)
    return st.lists(edit, min_size=1, max_size=3).map(
        lambda edits: apply(json.loads(json.dumps(template)), edits)
    )


def json_files(template: dict[str, Any], hash_fn: Callable[[Any], None] | None = None):
    """JSON bytes: ``template`` mutated (the shapes the code reads), or anything at all."""
    docs = st.one_of(mutated(template, hash_fn), mutated(template, hash_fn), nested())
    dumped = docs.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8"))
    return st.one_of(dumped, dumped, dumped, deep().map(str.encode), st.binary(max_size=100))


# -- templates: the shapes salun writes (values as a small run would give) --------------------
def _row(name: str, ua: float) -> dict[str, Any]:
    return {"name": name, "UA": ua, "MIA-Efficacy": 12.0, "RA": 99.0, "TA": 95.5, "Avg. Gap": 1.5,
            "RTE (s)": 2.0}  # fmt: skip


DEMO_METRICS = {
    "title": "digits, class-wise forgetting (class 3)",
    "dataset": "digits",
    "scenario": "class",
    "forget_class": 3,
    "forget_class_name": "3",
    "seed": 0,
    "sizes": {"train": 600, "forget": 61, "retain": 539, "test": 179},
    "original": {"info": {"train_acc": 99.5}, "metrics": {"UA": 0.0, "RA": 99.0}},
    "rows": [_row("Retrain", 100.0), _row("salun", 99.0)],
}
GENERATION_METRICS = {"title": "DDPM, class 3 erased", "rows": [{"name": "salun", "UA": 99.0,
                      "other_acc": 90.0, "FID": 12.5}], "table": "| a |"}  # fmt: skip


def bench_metrics(label: str, kind: str) -> dict[str, Any]:
    mia = {"SVC-MIA-entropy": {"score": 0.5}, "Loss-LR-MIA": {"cv_auc": 0.5}}
    return {
        "name": f"default/seed0/{label}", "scenario": "default", "seed": 0, "kind": kind,
        "label": label, "method": None if kind == "retrain" else label, "params": {},
        "dataset": "digits", "original_train_acc": 99.5, "run": {"rte_seconds": 1.5},
        "metrics": {"UA": 5.0, "MIA-Efficacy": 10.0, "RA": 99.0, "TA": 95.0},
        "extended": {"ZRF": 0.9, "mia_family": mia}, "retrain_distance": {"L2-distance": 1.0},
        "retrain_free_estimate": None,
    }  # fmt: skip


AUDIT = {
    "format": "salun-audit-v1",
    "created": "2024-01-01T00:00:00+0000",
    "forgotten": {"dataset": "digits", "scenario": "class", "forget_class": 3,
                  "forget_class_name": "3", "count": 61, "indices": None,
                  "indices_hash": "ab" * 32, "split_hash": "cd" * 32},
    "original_model_hash": "ef" * 32,
    "method": "salun",
    "config": {"unlearn": {"method": "salun"}},
    "result_model_hash": "01" * 32,
    "metrics": {"metrics": {"UA": 99.0, "RA": 98.0}, "retrain": {"UA": 100.0}},
    "versions": {"salun": "0.1"},
    "files": {},
}  # fmt: skip
MODEL_FILE = b"not really weights"
DDPM_META = {"format": "salun-ddpm-v1", "num_classes": 10, "null_label": 10, "classes": list(
    "0123456789"), "image_size": 16, "channels": 1, "pixel_range": [-1, 1], "guidance": 2.0,
    "dataset": "digits"}  # fmt: skip


def rehash_split(doc: Any) -> None:
    """Give a mutated split the hash of its (mutated) indices, so it gets past the hash check."""
    from salun.core.io import hash_obj

    keys = ("dataset", "scenario", "forget_class", "train", "val", "test", "forget", "retain")
    if isinstance(doc, dict) and isinstance(doc.get("hash"), str):
        with contextlib.suppress(Exception):
            doc["hash"] = hash_obj({k: doc.get(k) for k in keys})


# -- strategies for the CSV files -----------------------------------------------------------
def csv_bytes(header, cells):
    """A CSV file (as bytes) with ``header`` and 0-4 rows of ``cells``."""

    def render(head: list[str], rows: list[list[str]]) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerows([head, *rows])
        return buf.getvalue()

    rows = st.lists(st.lists(cells, max_size=5), max_size=4)
    return encoded(st.builds(render, header, rows) | st.text(max_size=100))


def i2p_files():
    names = ("prompt", "evaluation_seed", "seed", "sd_seed", "evaluation_guidance", "guidance",
             "sd_guidance_scale", "case_number", "Prompt ", "")  # fmt: skip
    header = st.lists(st.sampled_from(names) | st.text(max_size=8), max_size=5)
    cells = st.one_of(numbers().map(str), texts(), st.sampled_from(["1e20", "42.0", "-5", "nan"]))
    good = st.just(["prompt", "evaluation_seed", "evaluation_guidance"])
    return csv_bytes(header | good | good, cells)


def caption_files():
    files = st.sampled_from(["a.png", "b.png", "missing.png", "../outside.png", "/etc/hostname",
                             "", ".", "sub/../a.png", "b.png\x00"])  # fmt: skip
    header = st.just(["file", "caption"]) | st.lists(st.sampled_from(["file", "caption", "x"]))
    cells = st.one_of(files, texts(), st.text(min_size=200, max_size=2000))
    return csv_bytes(header, cells)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home(tmp_path_factory):
    """Hypothesis keeps caches (constants, unicode tables) in .hypothesis under the working
    directory even without a database: here they go to a temporary folder instead."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def digits(work):
    """The smoke/digits config and its split (prepare only: no training)."""
    from salun.config import load_config
    from salun.run import prepare

    cfg = load_config("smoke/digits", [f"cache_dir={work / 'cache'}", "progress=false"])
    return cfg, prepare(cfg).split.to_dict()


@pytest.fixture(scope="module")
def ddpm(work):
    """A DDPM folder (untrained smoke/ddpm UNet) written by save_ddpm."""
    from salun.config import load_config
    from salun.run import prepare
    from salun.tasks.ddpm.ddpm_folders import save_ddpm

    exp = prepare(load_config("smoke/ddpm", [f"cache_dir={work / 'cache'}", "progress=false"]))
    return save_ddpm(exp.new_model(), exp, work / "ddpm")


@pytest.fixture(scope="module")
def pipeline(work):
    """A tiny Stable Diffusion pipeline folder (random weights)."""
    from salun.tasks.text_to_image.text_to_image_io import save_pipeline, tiny_pipeline

    return save_pipeline(tiny_pipeline(["a photo"], image_size=16, channels=1), work / "sd")


def linked(src: Path, dst: Path, replace: str, content: bytes) -> Path:
    """``dst``: a folder whose parts link to ``src``'s, except ``replace``, which holds
    ``content``."""
    dst.mkdir()
    for part in src.iterdir():
        if part.name != replace:
            (dst / part.name).symlink_to(part)
    (dst / replace).write_bytes(content)
    return dst


def png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


# -- the targets ----------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_config_overrides(profile):
    """``salun config smoke/digits KEY=VALUE...`` for every field, right and wrong values."""
    known = [["data=null"], ["runtime="], [f"train.lr={10**400}"]]
    fuzz(profile, "overrides", lambda items: cli(["config", "smoke/digits", *items]),
         override_lists(), known=known)  # fmt: skip


@pytest.mark.parametrize("profile", PROFILES)
def test_method_params(profile):
    """``salun config smoke/digits unlearn.method=M unlearn.params.P=VALUE``."""
    known = [["unlearn.method=ga", f"unlearn.params.lr={10**400}"]]
    check = lambda items: cli(["config", "smoke/digits", *items])  # noqa: E731
    fuzz(profile, "params", check, method_params(), known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_preset_yaml(profile):
    """``salun config FILE.yaml`` with a random YAML document (or bytes) as the preset."""

    def check(doc: bytes) -> None:
        with scratch() as d:
            (d / "preset.yaml").write_bytes(doc)
            cli(["config", str(d / "preset.yaml")])

    fuzz(profile, "preset_yaml", check, yaml_documents())


@pytest.mark.parametrize("profile", PROFILES)
def test_split_json(profile, digits):
    """``prepare(cfg, split.json)`` (what ``--split`` runs before any training)."""
    from salun.run import prepare

    cfg, split = digits

    def check(doc: bytes) -> None:
        with scratch() as d:
            (d / "split.json").write_bytes(doc)
            library(lambda: prepare(cfg, d / "split.json"), f"split.json {doc[:300]!r}")

    huge = {**split, "forget": [2**70, *split["forget"][1:]]}
    rehash_split(huge)
    known = [json.dumps(huge).encode(), b"[" * 5000 + b"]" * 5000]
    fuzz(profile, "split_json", check, json_files(split, rehash_split), known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_demo_metrics(profile):
    """``salun report DIR [DIR2]``: demo folders whose metrics.json are random."""

    def check(docs: tuple[bytes, bytes, int]) -> None:
        with scratch() as d:
            folders = []
            for i, doc in enumerate(docs[: docs[2]]):
                (d / f"s{i}" / "class").mkdir(parents=True)
                (d / f"s{i}" / "class" / "metrics.json").write_bytes(doc)
                folders.append(str(d / f"s{i}"))
            cli(["report", *folders])

    demo = json_files(DEMO_METRICS) | json_files(GENERATION_METRICS)
    fuzz(profile, "demo_metrics", check, st.tuples(demo, demo, st.integers(1, 2)))


@pytest.mark.parametrize("profile", PROFILES)
def test_bench_metrics(profile):
    """``salun report BENCH --no-plots``: a bench folder with a random run (metrics, run.json,
    error.json) beside a valid Retrain run."""

    def check(docs: tuple[bytes, bytes, bytes | None]) -> None:
        metrics, run_json, error = docs
        with scratch() as d:
            for label, kind, doc in (("retrain", "retrain", None), ("salun", "unlearn", metrics)):
                run = d / "default" / "seed0" / label
                run.mkdir(parents=True)
                body = json.dumps(bench_metrics(label, kind)).encode() if doc is None else doc
                (run / "run.json").write_bytes(run_json if doc else b'{"name": "r"}')
                (run / ("error.json" if error is not None and doc else "metrics.json")).write_bytes(
                    error if error is not None and doc else body
                )
            cli(["report", str(d), "--no-plots"])

    runs = st.tuples(
        json_files(bench_metrics("salun", "unlearn")),
        json_files({"name": "default/seed0/salun"}),
        st.none() | json_files({"error": "bad input"}),
    )
    known = [(doc, b'{"name": "r"}', None) for doc in (b"{", b"[]", b"{}", b'{"UA": "abc"}')]
    fuzz(profile, "bench_metrics", check, runs, known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_audit_json(profile):
    """``salun audit RUN``: a run folder whose audit.json is random (its file hashes right)."""
    from salun.core.io import sha256_bytes

    template = {**AUDIT, "files": {"model.safetensors": sha256_bytes(MODEL_FILE)}}

    def check(doc: bytes) -> None:
        with scratch() as d:
            (d / "run").mkdir()
            (d / "run" / "model.safetensors").write_bytes(MODEL_FILE)
            (d / "run" / "audit.json").write_bytes(doc)
            cli(["audit", str(d / "run")])

    known = [b"[]", b"[" * 5000 + b"]" * 5000]
    fuzz(profile, "audit_json", check, json_files(template), known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_ddpm_meta(profile, ddpm):
    """``salun sample`` on a DDPM folder whose salun.json is random (one sample, one step)."""

    def check(doc: bytes) -> None:
        with scratch() as d:
            model = linked(ddpm, d / "model", "salun.json", doc)
            rc = cli(["sample", "--model", str(model), "--out", str(d / "out"), "--classes", "0",
                      "--n", "1", "--steps", "1", "--no-progress"])  # fmt: skip
            assert rc == 0 or not (d / "out").exists(), f"salun.json {doc[:300]!r}: out left"

    fuzz(profile, "ddpm_meta", check, json_files(DDPM_META), bound_s=10)


def sample_options():
    """``salun sample`` options: valid and wrong values (``--n`` kept small: it is work)."""
    ints = st.one_of(st.integers(-2, 3), st.sampled_from(BIG)).map(str)
    return st.fixed_dictionaries(
        {},
        optional={
            "--classes": st.one_of(
                st.sampled_from(["0", "0,1", "30", "-1", "", "a,b", "9"]), ints
            ),  # fmt: skip
            "--n": st.sampled_from(["1", "2", "0", "-1"]),
            "--steps": st.one_of(st.sampled_from(["1", "2", "1001", "0"]), ints),
            "--seed": ints,
            "--guidance": st.one_of(numbers().map(str), st.sampled_from(["nan", "inf", "-1"])),
            "--sampler": st.sampled_from(["ddim", "ddpm", "euler", ""]),
        },
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_sample_options(profile, ddpm):
    """``salun sample`` with random option values on a valid DDPM folder."""

    def check(options: dict[str, str]) -> None:
        with scratch() as d:
            argv = ["sample", "--model", str(ddpm), "--out", str(d / "out"), "--no-progress"]
            argv += [f"{k}={v}" for k, v in options.items()]
            if "--steps" not in options:
                argv.append("--steps=1")
            assert cli(argv) == 0 or not (d / "out").exists(), f"{argv!r}: --out left behind"

    known = [{"--steps": "1001"}, {"--seed": str(2**70)}]
    fuzz(profile, "sample_options", check, sample_options(), bound_s=10, known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_model_index(profile, pipeline):
    """``load_pipeline`` on a pipeline folder whose model_index.json is random."""
    from salun.tasks.text_to_image.text_to_image_io import load_pipeline

    template = json.loads((pipeline / "model_index.json").read_text(encoding="utf-8"))

    def check(doc: bytes) -> None:
        with scratch() as d:
            folder = linked(pipeline, d / "sd", "model_index.json", doc)
            library(lambda: load_pipeline(folder), f"model_index.json {doc[:300]!r}")

    fuzz(profile, "model_index", check, json_files(template), bound_s=10)


@pytest.mark.parametrize("profile", PROFILES)
def test_captions_csv(profile):
    """``read_caption_folder`` with a random captions.csv beside two images; an image outside
    the folder is never read."""
    from salun.tasks.text_to_image.text_to_image_files import read_caption_folder

    def check(doc: bytes) -> None:
        with scratch() as d:
            (d / "images").mkdir()
            for name in ("images/a.png", "images/b.png", "outside.png"):
                png(d / name)
            (d / "images" / "captions.csv").write_bytes(doc)
            got = library(lambda: read_caption_folder(d / "images", 8), f"captions {doc[:300]!r}")
            if got is not None:
                rows = csv.DictReader(io.StringIO(doc.decode("utf-8")))
                root = (d / "images").resolve()
                outside = [
                    r["file"] for r in rows if root not in (root / r["file"]).resolve().parents
                ]
                assert not outside, f"captions {doc[:300]!r}: read {outside} outside the folder"

    known = ["file,caption\na.png,caf\xe9\n".encode("latin-1"), b"file,caption\n../outside.png,x\n"]
    fuzz(profile, "captions", check, caption_files(), known=known)


@pytest.mark.parametrize("profile", PROFILES)
def test_i2p_csv(profile):
    """``read_i2p_csv`` with a random prompt CSV; every seed read can seed a generator."""
    import torch

    from salun.eval.prompts import read_i2p_csv

    def check(doc: bytes) -> None:
        with scratch() as d:
            (d / "prompts.csv").write_bytes(doc)
            specs = library(lambda: read_i2p_csv(d / "prompts.csv"), f"I2P CSV {doc[:300]!r}")
            for spec in specs or []:
                try:
                    torch.Generator().manual_seed(spec.seed)
                except (RuntimeError, ValueError, OverflowError) as e:
                    raise AssertionError(f"I2P CSV {doc[:300]!r}: seed {spec.seed}: {e}") from None

    known = [
        b"prompt,evaluation_seed,evaluation_guidance\nx,1e20,7.5\n",
        "prompt,seed,guidance\n\xe9,1,2\n".encode("latin-1"),
    ]
    fuzz(profile, "i2p_csv", check, i2p_files(), known=known)
