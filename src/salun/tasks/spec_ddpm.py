"""The ``ddpm`` task: class erasure from a class-conditional DDPM (Fan et al., 2024, DDPM setting).

Implements :class:`salun.tasks.base.Task` on top of the objective
:class:`salun.tasks.ddpm.DiffusionTask`: diffusers UNets saved as folders (``unet/``,
``scheduler/``, ``salun.json``; safetensors only, local files only), and the generation metrics
of :mod:`salun.eval.generation` (UA by a judge classifier, other-class accuracy, FID) with the
judge trained once through the cached trainer.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from salun.catalog import display_name
from salun.config import Config, check_choice
from salun.data import DatasetBundle, IndexedDataset
from salun.errors import SalunError, require_extra
from salun.eval.accuracy import predict
from salun.eval.fid import feature_extractor
from salun.eval.generation import DEFINITIONS, GEN_EVAL_VERSION, sample_and_score, save_grid
from salun.experiment import (
    Experiment,
    cache_key,
    cached_train,
    check_finite_weights,
    load_weights,
    reseed,
)
from salun.io import hash_obj, replace_folder
from salun.methods._fit import Optim, fit
from salun.registry import TASKS
from salun.tasks.classification import resolve_device
from salun.tasks.ddpm import (
    BETA_SCHEDULES,
    RELABEL,
    SAMPLERS,
    TARGETS,
    DiffusionTask,
    make_scheduler,
)
from salun.tasks.spec_classification import Classification

log = logging.getLogger(__name__)


@TASKS.register("ddpm")
@dataclass
class Diffusion(DiffusionTask):
    """Class-conditional DDPM: noise-prediction objective, diffusers folders, judged samples."""

    default_preset: ClassVar[str | None] = "demo-ddpm"
    config_section: ClassVar[str | None] = "diffusion"
    headline: ClassVar[tuple[str, ...]] = ("UA", "other_acc", "FID")
    demo: ClassVar[str] = "salun.ddpm:run_ddpm_demo"
    demo_files: ClassVar[str] = "report.md, metrics.json and sample grids (grid_*.png)"
    demo_out: ClassVar[str] = "runs/demo-ddpm"
    pipeline: ClassVar[Any] = None  # the standard pipeline of salun.run

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle) -> Diffusion:
        g = cfg.diffusion
        return cls(
            num_classes=bundle.train.num_classes,
            scheduler=make_scheduler(g.timesteps, g.beta_schedule),
            device=resolve_device(cfg.device),
            progress=cfg.progress,
            p_uncond=g.p_uncond,
            relabel_mode=g.relabel,
            target=g.target,
            seed=cfg.seed,
        )

    @staticmethod
    def check_config(cfg: Config) -> None:
        from salun.models import MODELS

        g = cfg.diffusion
        if cfg.data.scenario != "class":
            raise SalunError(
                f"task ddpm erases a class: data.scenario must be 'class', got {cfg.data.scenario!r}"
            )
        if cfg.eval.ulira or cfg.eval.epsilon:
            raise SalunError(
                "eval.ulira and eval.epsilon attack classifiers; turn them off for task ddpm"
            )
        if cfg.bench is not None:
            raise SalunError("salun bench runs classification studies; task ddpm has no bench yet")
        check_choice("diffusion.beta_schedule", g.beta_schedule, tuple(BETA_SCHEDULES))
        check_choice("diffusion.sampler", g.sampler, SAMPLERS)
        check_choice("diffusion.relabel", g.relabel, RELABEL)
        check_choice("diffusion.target", g.target, TARGETS)
        check_choice("diffusion.judge_model", g.judge_model, MODELS)
        if not 0 <= g.p_uncond < 1:
            raise SalunError(f"diffusion.p_uncond must be in [0, 1), got {g.p_uncond!r}")
        if g.timesteps < 2 or g.sample_steps < 1 or g.samples_per_class < 1:
            raise SalunError(
                "diffusion.timesteps must be >= 2, sample_steps and samples_per_class >= 1 (got "
                f"{g.timesteps}, {g.sample_steps}, {g.samples_per_class})"
            )
        if not g.widths or any(not isinstance(w, int) or w < 8 or w % 8 for w in g.widths):
            raise SalunError(f"diffusion.widths must be multiples of 8, got {g.widths!r}")

    def build_model(self, exp: Experiment) -> nn.Module:
        from salun.models.unet import build_unet

        g, train = exp.cfg.diffusion, exp.bundle.train
        unet = build_unet(
            train.image_size,
            train.in_channels,
            train.num_classes,
            g.widths,
            g.layers_per_block,
            g.attention,
        )
        return unet.to(self.device)

    def load_model(self, exp: Experiment, path: str | Path) -> nn.Module:
        return load_model(exp, path)

    def save_model(self, exp: Experiment, model: nn.Module, folder: Path) -> Path:
        return save_ddpm(model, exp, Path(folder) / "model")

    def cache_fields(self, cfg: Config) -> dict[str, Any]:
        g = cfg.diffusion
        return {
            "model": {
                "unet": [list(g.widths), g.layers_per_block, g.attention],
                "schedule": [g.timesteps, g.beta_schedule, g.p_uncond],
            },
            "task": "ddpm",
        }

    def fit_summary(self, exp: Experiment, model: nn.Module, data: Dataset) -> dict[str, Any]:
        return {"train_mse": self.mean_loss(model, data)}

    def evaluate(
        self, exp: Experiment, model: nn.Module, out: Path | None = None, tag: str = "samples"
    ) -> dict[str, Any]:
        """Generation metrics; with ``out``, the sample grid as ``out/grid_<tag>.png`` (``tag``:
        the model's name, e.g. a method or ``original``; rows labelled by class)."""
        metrics, images, labels = evaluate_ddpm(exp, model)
        if out is not None:
            save_grid(
                images,
                labels,
                Path(out) / f"grid_{tag}.png",
                title=f"{display_name(tag)}: {exp.cfg.data.name}",
                class_names=list(exp.bundle.train.classes),
            )
        return metrics

    def compare(
        self,
        exp: Experiment,
        model: nn.Module,
        original: nn.Module,
        result: dict[str, Any],
        out: Path,
    ) -> None:
        """The original's metrics and its samples (``grid_original.png``)."""
        result["original"]["metrics"] = self.evaluate(exp, original, out, "original")


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
        replace_folder(tmp, folder)  # an existing folder is moved aside, then deleted
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
    key = cache_key(
        "judge-v2",
        dataset=c.data.name,
        image_size=c.data.image_size,
        indices=hash_obj(exp.split.train.tolist()),
        model=[g.judge_model, g.judge_width],
        recipe=asdict(recipe),
        seed=c.seed,
    )
    path = Path(c.cache_dir) / f"judge-{key}.safetensors"
    cfg = copy.deepcopy(c)
    cfg.task = "classification"  # the judge is a classifier of the same images
    cfg.model.name, cfg.model.width, cfg.model.channels_last = g.judge_model, g.judge_width, False
    cls_exp = Experiment(
        cfg,
        exp.bundle,
        exp.split,
        Classification(exp.bundle.train.num_classes, exp.task.device, exp.task.progress),
    )

    def train(judge: nn.Module) -> dict[str, Any]:
        reseed(cls_exp, c.seed)
        loader = cls_exp.task.loader(cls_exp.train, recipe.batch_size, True, c.seed)
        start = time.perf_counter()
        fit(
            judge, lambda e: [(loader, cls_exp.task.loss)], recipe, None, exp.task.progress, "judge"
        )
        seconds = time.perf_counter() - start
        # held-out accuracy over the whole test set, the forgotten class included
        full_test = IndexedDataset(exp.bundle.test)
        pred = predict(judge, full_test, cls_exp.task)
        forget_class = int(exp.bundle.train.labels[exp.split.forget[0]])
        in_class = pred.labels == forget_class
        log.info("judge classifier: test accuracy %.2f%%", pred.accuracy)
        return {
            "name": f"{g.judge_model} (width {g.judge_width})",
            "test_acc": pred.accuracy,
            "test_size": len(full_test),
            "forget_class_test_acc": 100.0
            * float((pred.predicted[in_class] == forget_class).float().mean()),
            "seconds": round(seconds, 3),
            "cache_key": key,
        }

    judge, info = cached_train("judge", path, cls_exp.new_model(seed=c.seed), train)
    return judge.eval(), info


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
