"""The ``ddpm`` task: class erasure from a class-conditional DDPM (Fan et al., 2024, DDPM setting).

Implements :class:`salun.tasks.base.Task` on top of the objective
:class:`salun.tasks.ddpm.ddpm_objective.DiffusionTask`: diffusers UNets saved as folders (``unet/``,
``scheduler/``, ``salun.json``; safetensors only, local files only), and the generation metrics
of :mod:`salun.eval.generation` (UA by a judge classifier, other-class accuracy, FID) with the
judge trained once through the cached trainer.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from salun.config import Config, check_choice
from salun.core.catalog import display_name
from salun.core.errors import SalunError
from salun.core.io import hash_obj
from salun.core.registry import TASKS
from salun.data import DatasetBundle, IndexedDataset
from salun.eval.accuracy import predict
from salun.eval.fid import feature_extractor
from salun.eval.generation import (
    DEFINITIONS,
    GEN_EVAL_VERSION,
    SAMPLERS,
    sample_and_score,
    save_grid,
)
from salun.experiment import (
    Experiment,
    cache_key,
    cached_train,
    check_finite_weights,
    reseed,
)
from salun.methods._fit import Optim, fit
from salun.tasks.batches import resolve_device
from salun.tasks.ddpm.ddpm_folders import load_model, save_ddpm
from salun.tasks.ddpm.ddpm_objective import (
    BETA_SCHEDULES,
    RELABEL,
    TARGETS,
    DiffusionTask,
    make_scheduler,
)

log = logging.getLogger(__name__)


@TASKS.register("ddpm")
@dataclass
class Diffusion(DiffusionTask):
    """Class-conditional DDPM: noise-prediction objective, diffusers folders, judged samples."""

    default_preset: ClassVar[str | None] = "demo-ddpm"
    config_section: ClassVar[str | None] = "diffusion"
    headline: ClassVar[tuple[str, ...]] = ("UA", "other_acc", "FID")
    demo: ClassVar[str] = "salun.demos.ddpm_demo:run_ddpm_demo"
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
        if g.sample_steps > g.timesteps:
            raise SalunError(
                f"diffusion.sample_steps must be <= diffusion.timesteps ({g.timesteps}), "
                f"got {g.sample_steps}"
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
        TASKS.get("classification")(
            exp.bundle.train.num_classes, exp.task.device, exp.task.progress
        ),
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
