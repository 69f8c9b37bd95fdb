"""Class erasure from a class-conditional DDPM: model folders, the judge, evaluation, runs, demo.

The methods are the classification ones (FT, GA, RL, SalUn, Retrain) plus ESD; they only see the
:class:`~salun.tasks.ddpm.DiffusionTask`. This module holds what is specific to generators:
saving and loading diffusers folders, the judge classifier (trained once per data split and
cached), sampling + scoring (:mod:`salun.eval.generation`), PNG sample grids and the demo.
Library code: it logs and returns tables; the CLI prints them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salun.catalog import display_name
from salun.config import Config, load_config, save_config
from salun.data import IndexedDataset
from salun.errors import SalunError, require_extra
from salun.eval.accuracy import predict
from salun.eval.fid import feature_extractor
from salun.eval.generation import DEFINITIONS, GEN_EVAL_VERSION, sample_and_score, save_grid
from salun.io import hash_obj, read_metadata, write_json, write_text
from salun.methods._fit import Optim, fit
from salun.report import markdown_table
from salun.run import (
    Experiment,
    load_weights,
    prepare,
    reseed,
    run_log,
    save_weights,
    train_model,
    unlearn_once,
    versions,
)
from salun.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)

META_FILE = "salun.json"


# -- model folders ---------------------------------------------------------------------------
def save_ddpm(model: Any, exp: Experiment, folder: str | Path) -> Path:
    """Write ``folder/unet`` (diffusers), ``folder/scheduler`` and ``folder/salun.json``.

    The folder appears complete or not at all: it is built next to the target and renamed.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp / "unet", safe_serialization=True)
        exp.task.scheduler.save_pretrained(tmp / "scheduler")
        data = exp.bundle.train
        meta = {
            "format": "salun-ddpm-v1",
            "num_classes": data.num_classes,
            "null_label": data.num_classes,
            "classes": list(data.classes),
            "image_size": data.image_size,
            "channels": data.in_channels,
            "pixel_range": [-1, 1],
            "guidance": exp.cfg.diffusion.guidance,
            "dataset": exp.cfg.data.name,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SalunError(f"{what} {str(path)!r} is corrupt (not valid JSON: {e})") from None
    if not isinstance(data, dict):
        raise SalunError(f"{what} {str(path)!r} is corrupt (not a JSON object)")
    return data


def load_ddpm(folder: str | Path):
    """(unet, scheduler, meta) from a folder written by :func:`save_ddpm`.

    Local files only, safetensors only: diffusers is never allowed to contact the Hub or to
    unpickle a ``.bin``. Every missing or corrupt part is a one-line SalunError.
    """
    require_extra("diffusers", "generation")
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if not folder.is_dir():
        raise SalunError(f"DDPM model folder {str(folder)!r} does not exist")
    need = {
        "unet/config.json": "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors": "the unet weights (safetensors)",
        "scheduler/scheduler_config.json": "scheduler/",
        META_FILE: META_FILE,
    }
    for rel, what in need.items():
        if not (folder / rel).is_file():
            raise SalunError(f"{str(folder)!r} is not a salun DDPM folder: {what} is missing")
    _read_json_file(folder / "unet" / "config.json", "unet config")
    _read_json_file(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    meta = _read_json_file(folder / META_FILE, META_FILE)
    for key in ("num_classes", "null_label"):
        if key in meta and (not isinstance(meta[key], int) or meta[key] < 1):
            raise SalunError(f"{META_FILE} in {str(folder)!r} is corrupt: bad {key} {meta[key]!r}")
    g = meta.get("guidance", 2.0)
    if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g):
        raise SalunError(f"{META_FILE} in {str(folder)!r} is corrupt: bad guidance {g!r}")
    # folders resolved to absolute paths: a relative name is never taken for a Hub repo id
    kwargs = {"local_files_only": True}
    try:
        # low_cpu_mem_usage needs accelerate; asking for it without accelerate only warns
        unet = UNet2DModel.from_pretrained(
            str((folder / "unet").resolve()),
            use_safetensors=True,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            **kwargs,
        )
        scheduler = DDPMScheduler.from_pretrained(str((folder / "scheduler").resolve()), **kwargs)
    except Exception as e:  # diffusers raises several types for bad configs and weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SalunError(f"DDPM folder {str(folder)!r} does not load: {first}") from None
    for name, t in unet.state_dict().items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise SalunError(
                f"DDPM folder {str(folder)!r} holds non-finite weights (NaN or inf) in {name!r}"
            )
    return unet, scheduler, meta


def load_model(exp: Experiment, path: str | Path) -> nn.Module:
    """A DDPM for ``exp`` from a diffusers folder or a safetensors state dict."""
    path = Path(path)
    if path.is_dir():
        unet: Any
        unet, _, meta = load_ddpm(path)
        want = exp.bundle.train.num_classes
        if meta.get("num_classes", want) != want:
            raise SalunError(
                f"model {str(path)!r} has {meta['num_classes']} classes, the data has {want}"
            )
        fresh: Any = exp.new_model()
        bad = [k for k, v in fresh.state_dict().items() if k not in unet.state_dict()]
        if bad or tuple(unet.config.block_out_channels) != tuple(fresh.config.block_out_channels):
            raise SalunError(
                f"model {str(path)!r} does not match diffusion.widths={exp.cfg.diffusion.widths}"
            )
        return unet.to(exp.task.device)
    return load_weights(exp.new_model(), path)


# -- judge -----------------------------------------------------------------------------------
def train_judge(exp: Experiment) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier that judges samples: trained on the split's training images (every
    class), cached like the original; its held-out test accuracy is recorded."""
    g, c = exp.cfg.diffusion, exp.cfg
    recipe = Optim(
        epochs=g.judge_epochs,
        lr=g.judge_lr,
        batch_size=g.judge_batch_size,
        schedule="cosine",
        weight_decay=5e-4,
    )
    key = hash_obj(
        {
            "kind": "judge-v2",
            "dataset": c.data.name,
            "image_size": c.data.image_size,
            "indices": hash_obj(exp.split.train.tolist()),
            "model": [g.judge_model, g.judge_width],
            "recipe": asdict(recipe),
            "seed": c.seed,
            "torch": torch.__version__.split("+")[0],
        }
    )[:20]
    path = Path(c.cache_dir) / f"judge-{key}.safetensors"
    from salun.run import cache_lock

    with cache_lock(path):  # one process trains a judge; others wait and load it
        return _train_judge(exp, path, key, recipe)


def _train_judge(
    exp: Experiment, path: Path, key: str, recipe: Optim
) -> tuple[nn.Module, dict[str, Any]]:
    g, c = exp.cfg.diffusion, exp.cfg
    cfg = copy.deepcopy(c)
    cfg.task = "classification"
    cfg.model.name, cfg.model.width, cfg.model.channels_last = g.judge_model, g.judge_width, False
    cls_exp = Experiment(
        cfg,
        exp.bundle,
        exp.split,
        ClassificationTask(exp.bundle.train.num_classes, exp.task.device, exp.task.progress),
    )
    judge = cls_exp.new_model(seed=c.seed)
    if path.is_file():
        load_weights(judge, path)
        info: dict[str, Any] = {k: _num(v) for k, v in read_metadata(path).items()}
        info["cache_hit"] = True
        return judge.eval(), info
    reseed(cls_exp, c.seed)
    loader = cls_exp.task.loader(cls_exp.train, recipe.batch_size, True, c.seed)
    start = time.perf_counter()
    fit(judge, lambda e: [(loader, cls_exp.task.loss)], recipe, None, exp.task.progress, "judge")
    seconds = time.perf_counter() - start
    # held-out accuracy over the whole test set, the forgotten class included
    full_test = IndexedDataset(exp.bundle.test)
    pred = predict(judge, full_test, cls_exp.task)
    forget_class = int(exp.bundle.train.labels[exp.split.forget[0]])
    in_class = pred.labels == forget_class
    info = {
        "name": f"{g.judge_model} (width {g.judge_width})",
        "test_acc": pred.accuracy,
        "test_size": len(full_test),
        "forget_class_test_acc": 100.0
        * float((pred.predicted[in_class] == forget_class).float().mean()),
        "seconds": round(seconds, 3),
        "cache_key": key,
    }
    save_weights(judge, path, {k: str(v) for k, v in info.items()})
    info["cache_hit"] = False
    log.info("judge classifier: test accuracy %.2f%%", info["test_acc"])
    return judge.eval(), info


def _num(v: str) -> Any:
    try:
        return float(v)
    except ValueError:
        return v


_JUDGES: dict[str, tuple[nn.Module, dict[str, Any]]] = {}


def judge_for(exp: Experiment) -> tuple[nn.Module, dict[str, Any]]:
    """The judge of ``exp``, trained or loaded once per process."""
    key = f"{exp.cfg.cache_dir}:{exp.split.hash}:{exp.cfg.seed}:{asdict(exp.cfg.diffusion)}"
    if key not in _JUDGES:
        _JUDGES[key] = train_judge(exp)
    return _JUDGES[key]


# -- evaluation ------------------------------------------------------------------------------
def evaluate_ddpm(
    exp: Experiment, model: nn.Module
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Sample every class, judge the samples, FID of the other classes; (metrics, images, labels)."""
    g = exp.cfg.diffusion
    from salun.run import check_finite_weights

    check_finite_weights(model)
    judge, judge_info = judge_for(exp)
    features = feature_extractor(g.fid_features, judge, g.fid_input_size)
    test = exp.test
    real = test.data.images[test.indices]
    real_labels = exp.task.labels_of(test)
    forget_class = int(exp.task.labels_of(exp.forget)[0])
    metrics, images, labels = sample_and_score(
        model,
        exp.task.scheduler,
        judge,
        forget_class,
        exp.bundle.train.num_classes,
        g.samples_per_class,
        g.guidance,
        g.sample_steps,
        g.sampler,
        exp.cfg.seed,
        real,
        real_labels,
        features,
        progress=exp.task.progress,
    )
    metrics.update(
        forget_class=forget_class,
        judge={
            **judge_info,
            "definition": "classifier trained on the split's training images (every class); "
            "test_acc over the whole held-out test set",
        },
        definitions=DEFINITIONS,
        evaluator_version=GEN_EVAL_VERSION,
    )
    return metrics, images, labels


# -- one run ---------------------------------------------------------------------------------
def run_unlearn_ddpm(
    cfg: Config,
    out: str | Path,
    model_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    split_path: str | Path | None = None,
    compare: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Unlearn one class from a DDPM with one method; write model folder, grids and metrics.

    The run folder is built beside ``out`` and renamed onto it at the end (the caller checked
    ``out``); ``audit.json`` is written last.
    """
    from salun.audit import write_audit
    from salun.io import hash_state, staged_folder
    from salun.run import check_finite_weights, requested_mask, unlearn_in_folder

    exp = prepare(cfg, split_path)
    original = load_model(exp, model_path) if model_path is not None else None
    orig_info: dict[str, Any] = {"checkpoint": str(model_path)} if model_path else {}
    mask = requested_mask(exp, mask_path)
    with staged_folder(out) as tmp:
        with run_log(tmp):
            original, orig_info, model, info, _ = unlearn_in_folder(
                exp, tmp, original, orig_info, mask, force
            )
            check_finite_weights(model, "the unlearned model")
            save_ddpm(model, exp, tmp / "model")
            metrics, images, labels = evaluate_ddpm(exp, model)
            names = list(exp.bundle.train.classes)
            save_grid(
                images,
                labels,
                tmp / f"grid_{cfg.unlearn.method}.png",
                title=f"{display_name(cfg.unlearn.method)}: {cfg.data.name}",
                class_names=names,
            )
            result: dict[str, Any] = {
                "task": "ddpm",
                "method": cfg.unlearn.method,
                "dataset": cfg.data.name,
                "forget_class": metrics["forget_class"],
                "seed": cfg.seed,
                "split_hash": exp.split.hash,
                "run": info,
                "metrics": metrics,
                "original": {"info": orig_info},
                "versions": versions(),
            }
            if compare:
                om, oimg, olab = evaluate_ddpm(exp, original)
                save_grid(
                    oimg, olab, tmp / "grid_original.png", title="Original", class_names=names
                )
                result["original"]["metrics"] = om
            write_json(tmp / "metrics.json", result)
        write_audit(
            tmp,
            split=exp.split,
            original_hash=hash_state(original),
            result_hash=hash_state(model),
            config=cfg.to_dict(),
            result=result,
        )
    return result


# -- demo ------------------------------------------------------------------------------------
# Settings of the DDPM demo's methods (digits 16x16, CPU budgets). Adam at lr 1e-4 as in the
# reference DDPM setting (Fan et al.), 10 passes. SalUn runs its alternating form (a pass over
# D_f with c' = next class, then a pass over D_r, 50 % mask): on this small UNet the paired
# ``form=paper`` with alpha = 1e-3 also erases the other classes (see docs/results.md). GA is shown
# at a learning rate where it forgets, which is also where it wrecks the model (as in the paper).
_ADAM = {"optimizer": "adam", "lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64}
DDPM_DEMO_METHODS: dict[str, dict[str, Any]] = {
    "salun": {**_ADAM, "form": "reference", "epochs": 10},
    "rl": {**_ADAM, "epochs": 10},
    "ga": {**_ADAM, "lr": 5e-4, "epochs": 5},
    "ft": {**_ADAM, "epochs": 10},
    "esd": {"lr": 2e-4, "epochs": 15, "batch_size": 64, "eta": 1.0},
}


DEMO_COLUMNS = ("UA", "other-class acc", "FID (others)", "time (s)")


def _row(name: str, m: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    return {
        "name": name,
        "UA": m["UA"],
        "other-class acc": m["other_acc"],
        "FID (others)": m.get("FID", float("nan")),
        "time (s)": seconds,
    }


def run_ddpm_demo(
    out: str | Path,
    seed: int = 0,
    progress: bool = True,
    overrides: list[str] | None = None,
    methods: dict[str, dict[str, Any]] | None = None,
    retrain: bool = False,
) -> dict[str, Any]:
    """Train a class-conditional DDPM on digits, erase one digit with each method, score them.

    Writes ``grid_<name>.png`` (one row per class), ``report.md`` and ``metrics.json``.
    """
    out = Path(out)
    cfg = load_config("demo-ddpm", [f"seed={seed}", f"progress={progress}", *(overrides or [])])
    methods = copy.deepcopy(DDPM_DEMO_METHODS if methods is None else methods)
    exp = prepare(cfg)
    with run_log(out):
        save_config(cfg, out / "config.yaml")
        exp.split.save(out / "split.json")
        original, orig_info = train_model(exp, "original")
        judge, judge_info = judge_for(exp)
        om, img, lab = evaluate_ddpm(exp, original)
        names = list(exp.bundle.train.classes)
        save_grid(img, lab, out / "grid_original.png", title="Original", class_names=names)
        rows = [_row("Original", om, orig_info.get("seconds"))]
        runs: dict[str, Any] = {"original": {"info": orig_info, "metrics": om}}
        if retrain:
            model, info = train_model(exp, "retrain")
            m, img, lab = evaluate_ddpm(exp, model)
            save_grid(img, lab, out / "grid_retrain.png", title="Retrain", class_names=names)
            rows.append(_row("Retrain", m, info.get("seconds")))
            runs["retrain"] = {"info": info, "metrics": m}
        for name, params in methods.items():
            model, info = unlearn_once(exp, original, name, params, mask=name == "salun")
            info.pop("_mask_obj", None)
            m, img, lab = evaluate_ddpm(exp, model)
            save_grid(
                img, lab, out / f"grid_{name}.png", title=display_name(name), class_names=names
            )
            rows.append(_row(display_name(name), m, info["rte_seconds"]))
            runs[name] = {"run": info, "metrics": m}
            log.info("%s: UA %.1f other-class acc %.1f", name, m["UA"], m["other_acc"])
        fc = om["forget_class"]
        title = (
            f"DDPM class erasure on {cfg.data.name} (forget class {fc} "
            f"'{exp.bundle.train.classes[fc]}'), seed {seed}; judge test accuracy "
            f"{judge_info['test_acc']:.1f}%"
        )
        table = markdown_table(rows, DEMO_COLUMNS)
        result = {
            "title": title,
            "task": "ddpm",
            "seed": seed,
            "split_hash": exp.split.hash,
            "judge": judge_info,
            "runs": runs,
            "rows": rows,
            "definitions": DEFINITIONS,
            "evaluator_version": GEN_EVAL_VERSION,
            "sampling": om["sampling"],
            "fid_features": om.get("fid_features"),
            "versions": versions(),
        }
        write_json(out / "metrics.json", result)
        notes = "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items())
        write_text(
            out / "report.md",
            f"# {title}\n\n{table}\n\nSampling: {om['sampling']}; FID features: "
            f"{om.get('fid_features')} (not comparable to Inception FID). Sample grids: "
            f"grid_<method>.png, one row per class.\n\n## Definitions ({GEN_EVAL_VERSION})\n\n"
            f"{notes}\n",
        )
        result["table"] = table
    return result
