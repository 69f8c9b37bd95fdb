"""Issue 20, code from files: no pickle is read back from a bench folder, no model folder's custom
code runs (``auto_map``, custom diffusers classes), and src/ has no load path that unpickles or
executes (checked by scanning the sources)."""

from __future__ import annotations

import ast
import functools
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from salun.cli import main
from salun.core.errors import SalunError

SRC = Path(__file__).resolve().parents[1] / "src" / "salun"


class _Payload:
    """Unpickling this writes ``marker``: proof that a planted pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from a planted file ran"))


def _plant_pickles(folder: Path, marker: Path, window: int = 3000) -> int:
    """Plant the payload at every path submitit's local backend would use in ``folder`` for the
    next ``window`` process ids (its job id is the pid): the submitted job, the result, and the
    result's temporary file (which makes a real job fail to write its own result, so a reader of
    results would fall back on the planted one)."""
    folder.mkdir(parents=True)
    payload = pickle.dumps(_Payload(marker))
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    n = 0
    for k in range(1, window + 1):
        pid = (last + k) % pid_max or 1
        for name in (f"{pid}_submitted.pkl", f"{pid}_0_result.pkl", f"{pid}_0_result.pkl.save_tmp"):
            (folder / name).write_bytes(payload)
            n += 1
    return n


def _spy_on_submitit_unpickling(monkeypatch) -> list[str]:
    """Record every call of submitit's pickle loader in this process (the real loader still runs):
    the bench must never call it."""
    pytest.importorskip("submitit")
    import submitit.core.utils as sutils

    loaded: list[str] = []
    real_load = sutils.pickle_load

    def spy(filename):
        loaded.append(str(filename))
        return real_load(filename)

    monkeypatch.setattr(sutils, "pickle_load", spy)
    return loaded


GRID = ["digits-random10", "bench.seeds=[0]", "threads=1", "train.epochs=2"]
LINUX_PIDS = pytest.mark.skipif(
    not Path("/proc/sys/kernel/ns_last_pid").exists(), reason="plants files named by Linux pids"
)


@LINUX_PIDS
def test_local_executor_reads_no_planted_pickle(tmp_path, monkeypatch):
    from salun.bench.executors import run_folders
    from salun.bench.grid import expand_grid
    from salun.bench.runner import _prepare_run, fingerprint
    from salun.config import load_config

    loaded = _spy_on_submitit_unpickling(monkeypatch)
    out, marker = tmp_path / "bench", tmp_path / "MARKER"
    _plant_pickles(out / "submitit", marker)
    cfg = load_config(GRID[0], [*GRID[1:], "bench.methods={ft: {epochs: 1}}"])
    (spec,) = [s for s in expand_grid(cfg) if s.kind == "retrain"]
    good = out / spec.name
    _prepare_run(spec, good, str(out / "cache"), fingerprint(spec))
    broken = out / "broken" / "seed0" / "run"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("data: [\n")
    seen: list[tuple[str, bool]] = []

    def done(folder, ok):
        seen.append((folder.name, ok))

    never = lambda folder, timeout: pytest.fail("the subprocess runner ran")  # noqa: E731
    ok = run_folders([good, broken], never, 2, "local", None, None, out, done)
    assert not marker.exists()
    assert loaded == []
    assert ok == [True, False] and seen == [("retrain", True), ("run", False)]
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["kind"] == "retrain" and set(metrics["metrics"]) == {
        "UA",
        "MIA-Efficacy",
        "RA",
        "TA",
    }
    assert "config.yaml" in json.loads((broken / "error.json").read_text())["error"]
    # the jobs ran in a new folder of submitit's own, each leaving a JSON exit record
    (used,) = [p for p in (out / "submitit").iterdir() if p.is_dir()]
    records = [json.loads((used / f"{i}.exit.json").read_text()) for i in range(2)]
    assert [r["returncode"] for r in records] == [0, 2]


@pytest.mark.slow  # 4 submitit jobs, each a fresh interpreter (~30 s idle, minutes under load)
@LINUX_PIDS
def test_bench_cli_local_executor_reads_no_planted_pickle(tmp_path, monkeypatch):
    loaded = _spy_on_submitit_unpickling(monkeypatch)
    out, marker = tmp_path / "bench", tmp_path / "MARKER"
    _plant_pickles(out / "submitit", marker)
    grid = [*GRID, "bench.methods={ft: {epochs: 1, lr: 0.01}}"]
    args = ["bench", *grid, "--out", str(out), "--no-progress", "--executor", "local"]
    assert main([*args, "--jobs", "4"]) == 0
    assert not marker.exists()
    assert loaded == []
    runs = sorted(p.parent.name for p in out.glob("*/seed*/*/metrics.json"))
    assert runs == ["ft", "original", "retrain", "retrain_prime"]
    assert not list(out.glob("*/seed*/*/error.json"))
    assert json.loads((out / "report.json").read_text())["runs"] == 4
    (used,) = [p for p in (out / "submitit").iterdir() if p.is_dir()]
    records = [json.loads(p.read_text()) for p in sorted(used.glob("*.exit.json"))]
    assert [r["returncode"] for r in records] == [0, 0, 0, 0]
    assert len({r["token"] for r in records}) == 4


def test_exit_records_are_validated(tmp_path):
    from salun.bench.executors import exit_code, fresh_folder

    a, b = fresh_folder(tmp_path / "s"), fresh_folder(tmp_path / "s")
    assert a != b and a.parent == b.parent == tmp_path / "s"
    rec = a / "0.exit.json"
    assert exit_code(rec, "t") is None  # missing
    for bad in ("not json", "[0]", '{"token": "other", "returncode": 0}', '{"token": "t"}'):
        rec.write_text(bad)
        assert exit_code(rec, "t") is None
    rec.write_text('{"token": "t", "returncode": true}')
    assert exit_code(rec, "t") is None
    rec.write_bytes(pickle.dumps(_Payload(tmp_path / "MARKER")))
    assert exit_code(rec, "t") is None and not (tmp_path / "MARKER").exists()
    rec.write_text('{"token": "t", "returncode": 2}')
    assert exit_code(rec, "t") == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(SalunError, match="cannot create a folder for submitit under"):
        fresh_folder(tmp_path / "file")


# ---------------------------------------------------------------- model folders with custom code
def _evil_module(folder: Path, name: str, marker: Path) -> None:
    """A module in the folder that writes ``marker`` when imported (and defines the classes the
    configs name, so a loader that imports it would go on)."""
    (folder / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('custom code from a model folder ran')\n"
        "class Evil:\n    pass\n"
        "EvilConfig = EvilModel = EvilProcessor = EvilPipeline = EvilUNet = Evil\n"
    )


def _say_yes(monkeypatch) -> None:
    """stdin is not a terminal and answers "y" to any prompt (transformers asked, then ran)."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\ny\ny\n"))


def _one_line_refusal(excinfo, capfd) -> None:
    msg = str(excinfo.value)
    # a refusal of the code request, or of a model_index.json part that names no SD class
    structural = "model_index.json" in msg and "must be" in msg
    assert "\n" not in msg and ("never runs code from a model folder" in msg or structural)
    captured = capfd.readouterr()
    assert "[y/N]" not in captured.out + captured.err


def test_imagenet_classifier_auto_map_folder_runs_no_code(tmp_path, monkeypatch, capfd):
    pytest.importorskip("transformers")
    from salun.eval.imagenet_ua import ImageNetClassifier

    folder, marker = tmp_path / "clf", tmp_path / "MARKER"
    folder.mkdir()
    _evil_module(folder, "evil", marker)
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageClassification": "evil.EvilModel"}
    config = {"model_type": "evil", "num_labels": 1000, "auto_map": auto}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    _say_yes(monkeypatch)
    with pytest.raises(SalunError, match=r"config.json has an 'auto_map'") as excinfo:
        ImageNetClassifier(folder)
    assert not marker.exists()
    _one_line_refusal(excinfo, capfd)


def _byte_vocab() -> dict[str, int]:
    chars = [chr(c) for c in range(33, 127)]
    words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny, valid CLIP folder (model and processor), as ``save_pretrained`` writes it."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip")
    vocab = _byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    transformers.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ids = dict(bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, pad_token_id=0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, **small, **ids),
        vision_config=dict(image_size=16, patch_size=8, **small),
        projection_dim=8,
    )
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


CLIP_CASES = {  # config file -> where its auto_map goes (None: top level), and what it names
    "config.json": (None, {"AutoModel": "evil.EvilModel"}),
    "processor_config.json": (None, {"AutoProcessor": "evil.EvilProcessor"}),
    "processor_config.json:image": ("image_processor", {"AutoImageProcessor": "evil.Evil"}),
    "tokenizer_config.json": (None, {"AutoTokenizer": ["evil.Evil", None]}),
}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_clip_auto_map_folder_runs_no_code(clip_dir, case, tmp_path, monkeypatch, capfd):
    import shutil

    from salun.eval.clip_score import load_clip

    load_clip(clip_dir)  # the folder as saved loads
    folder, marker = tmp_path / "clip", tmp_path / "MARKER"
    shutil.copytree(clip_dir, folder)
    _evil_module(folder, "evil", marker)
    config = case.split(":")[0]
    section, auto = CLIP_CASES[case]
    data = json.loads((folder / config).read_text())
    (data[section] if section else data)["auto_map"] = auto
    (folder / config).write_text(json.dumps(data))
    _say_yes(monkeypatch)
    with pytest.raises(SalunError, match=f"{config} has an 'auto_map'") as excinfo:
        load_clip(folder)
    assert not marker.exists()
    _one_line_refusal(excinfo, capfd)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from salun.tasks.text_to_image.text_to_image_io import save_pipeline, tiny_pipeline

    pipe = tiny_pipeline(["a photo of the digit zero"], image_size=16, channels=1)
    return save_pipeline(pipe, tmp_path_factory.mktemp("sd") / "pipe")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "case, match",
    [
        # the folder's structure is checked first (text_to_image_files), then its code requests
        ("class-list", "_class_name must be a string"),
        ("class-name", "names the class 'EvilPipeline', which is not a diffusers class"),
        ("component", r'unet must be \["diffusers", a UNet2DConditionModel class\], got \["evil"'),
        ("auto-map", "unet/config.json has an 'auto_map'"),
    ],
)
def test_pipeline_with_custom_classes_runs_no_code(pipeline_dir, case, match, tmp_path, capfd):
    import shutil

    from salun.tasks.text_to_image.text_to_image_io import load_pipeline

    folder, marker = tmp_path / "pipe", tmp_path / "MARKER"
    shutil.copytree(pipeline_dir, folder)
    _evil_module(folder, "evil", marker)
    _evil_module(folder / "unet", "evil", marker)
    index = folder / "model_index.json"
    if case == "class-list":
        _edit_json(index, _class_name=["evil", "EvilPipeline"])
    elif case == "class-name":
        _edit_json(index, _class_name="EvilPipeline")
    elif case == "component":
        _edit_json(index, unet=["evil", "EvilUNet"])
    else:
        _edit_json(folder / "unet" / "config.json", auto_map={"AutoModel": "evil.EvilUNet"})
    with pytest.raises(SalunError, match=match) as excinfo:
        load_pipeline(folder)
    assert not marker.exists()
    _one_line_refusal(excinfo, capfd)


def test_pipeline_as_saved_loads(pipeline_dir):
    from salun.tasks.text_to_image.text_to_image_io import load_pipeline

    assert type(load_pipeline(pipeline_dir)).__name__ == "StableDiffusionPipeline"


@pytest.mark.parametrize("change", ["auto_map", "_class_name"])
def test_ddpm_folder_with_custom_code_is_refused(tmp_path, change):
    diffusers = pytest.importorskip("diffusers")
    from salun.tasks.ddpm.ddpm_folders import load_ddpm

    folder = tmp_path / "ddpm"
    diffusers.UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 4),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        layers_per_block=1,
        num_class_embeds=3,  # class-conditional, as salun's DDPM folders are
    ).save_pretrained(folder / "unet")
    diffusers.DDPMScheduler().save_pretrained(folder / "scheduler")
    (folder / "salun.json").write_text('{"num_classes": 2, "null_label": 2}')
    load_ddpm(folder)  # as saved, it loads
    value = {"AutoModel": "evil.Evil"} if change == "auto_map" else "EvilUNet"
    _edit_json(folder / "unet" / "config.json", **{change: value})
    with pytest.raises(SalunError, match="never runs code from a model folder"):
        load_ddpm(folder)


# ---------------------------------------------------------------- the sources
@functools.cache
def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(SRC.rglob("*.py"))]


def test_every_from_pretrained_passes_trust_remote_code_false():
    calls, bad = 0, []
    for path, tree in _sources():
        funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            attr = isinstance(node, ast.Attribute) and node.attr == "from_pretrained"
            if attr and id(node) not in funcs:  # a reference not called in place hides the call
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} (not called in place)")
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            ):
                continue
            calls += 1
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            trc = kw.get("trust_remote_code")
            if not (isinstance(trc, ast.Constant) and trc.value is False):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert calls >= 7  # imagenet (2), CLIP (2), DDPM (2), Stable Diffusion (1)
    assert bad == [], "from_pretrained without trust_remote_code=False: " + ", ".join(bad)
    # nor does any other call ask for remote code or a custom pipeline
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in (
                "trust_remote_code",
                "custom_pipeline",
            ):
                ok = isinstance(node.value, ast.Constant) and node.value.value is False
                assert ok, f"{path.relative_to(SRC)}:{node.value.lineno}: {node.arg}"


#: modules whose loaders unpickle or execute what they read
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal"}
UNSAFE_MODULES |= {"shelve", "runpy", "pickletools", "copyreg"}
#: calls that unpickle or execute, whatever their arguments (dotted name as written)
UNSAFE_CALLS = {
    "eval", "exec", "compile", "__import__", "torch.load", "torch.jit.load", "torch.export.load",
    "torch.package.PackageImporter", "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load",
    "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all", "os.system", "os.popen",
    "importlib.import_module",
}  # fmt: skip
#: calls safe only with a keyword: name -> (keyword, allowed values as source text)
GUARDED_CALLS = {
    "np.load": ("allow_pickle", {"False"}),
    "numpy.load": ("allow_pickle", {"False"}),
    "yaml.load": ("Loader", {"yaml.SafeLoader", "yaml.CSafeLoader"}),
    "yaml.load_all": ("Loader", {"yaml.SafeLoader", "yaml.CSafeLoader"}),
}
#: (file under src/salun, call) -> why it cannot load code from a file or from user input
ALLOWED = {
    ("__init__.py", "importlib.import_module"): "lazy public names: module paths from the "
    "_PUBLIC table in the same file, never from input",
    ("core/registry.py", "importlib.import_module"): "the registering packages named in code "
    "(Registry(source=...)) by salun's own modules",
    ("methods/__init__.py", "importlib.import_module"): "salun.methods' own modules, listed by "
    "pkgutil from the installed package folder",
    ("cli/cmd_demo.py", "importlib.import_module"): "the demo module of a registered task "
    "(TaskInfo.demo, set in code); the task name is checked against the registry first",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _unsafe(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every import or call in ``tree`` that may unpickle or execute."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.split(".")[0] in UNSAFE_MODULES or n in UNSAFE_CALLS]
            if bad:
                found.append((node.lineno, f"import {bad[0]}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in UNSAFE_CALLS:
            found.append((node.lineno, name))
        elif name in GUARDED_CALLS:
            key, allowed = GUARDED_CALLS[name]
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if kw.get(key) not in allowed:
                found.append((node.lineno, f"{name} without {key}={' or '.join(sorted(allowed))}"))
        if any(k.arg == "shell" and ast.unparse(k.value) != "False" for k in node.keywords):
            found.append((node.lineno, f"{name}(shell=...)"))
    return found


def test_the_scanner_finds_each_pattern():
    snippet = (
        "import pickle\nfrom joblib import load\nimport numpy as np, yaml, torch\n"
        "eval('1')\nexec('x=1')\ntorch.load('m.pt')\nnp.load('a.npy')\n"
        "np.load('a.npy', allow_pickle=True)\nyaml.load(t)\nyaml.load(t, Loader=yaml.Loader)\n"
        "subprocess.run(c, shell=True)\n"
        # and what is fine:
        "np.load('a.npz', allow_pickle=False)\nyaml.load(t, Loader=yaml.SafeLoader)\n"
        "yaml.safe_load(t)\ntorch.compile(m)\nm.eval()\n"
    )
    lines = [line for line, _ in _unsafe(ast.parse(snippet))]
    assert lines == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]


def test_no_load_path_in_src_unpickles_or_executes():
    found, used = [], set()
    for path, tree in _sources():
        rel = path.relative_to(SRC).as_posix()
        for line, what in _unsafe(tree):
            if (rel, what) in ALLOWED:
                used.add((rel, what))
            else:
                found.append(f"{rel}:{line}: {what}")
    assert found == [], "may unpickle or execute (fix it or allow it with a reason): " + str(found)
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"
