"""The ``classification`` task: image classifiers, the paper's main setting (Fan et al., 2024).

Implements :class:`salun.tasks.base.Task` on top of the objective
:class:`salun.tasks.classification.classification_objective.ClassificationTask`: models from :mod:`salun.models`,
metrics from :mod:`salun.eval` (UA, MIA-Efficacy, RA, TA), and the comparison with Retrain and
its noise floor (Retrain').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from salun.config import Config
from salun.core.registry import TASKS
from salun.data import DatasetBundle
from salun.eval import avg_gap, compare_to_retrain, evaluate_classifier
from salun.eval.accuracy import predict
from salun.experiment import (
    RETRAIN_PRIME_OFFSET,
    Experiment,
    evaluate,
    load_weights,
    save_weights,
    train_model,
)
from salun.models import build_model
from salun.tasks.batches import resolve_device
from salun.tasks.classification.classification_objective import ClassificationTask


@TASKS.register("classification")
@dataclass
class Classification(ClassificationTask):
    """Image classification: cross-entropy objective, safetensors weights, Retrain as reference."""

    default_preset: ClassVar[str | None] = None
    config_section: ClassVar[str | None] = None
    headline: ClassVar[tuple[str, ...]] = ("UA", "MIA-Efficacy", "RA", "TA")
    demo: ClassVar[str] = "salun.demos.classification_demo:run_demo"
    demo_files: ClassVar[str] = "reports, metrics.json and gaps.png"
    demo_out: ClassVar[str] = "runs/demo"
    pipeline: ClassVar[Any] = None  # the standard pipeline of salun.run

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle) -> Classification:
        return cls(
            num_classes=bundle.train.num_classes,
            device=resolve_device(cfg.device),
            progress=cfg.progress,
            channels_last=cfg.model.channels_last,
        )

    @staticmethod
    def check_config(cfg: Config) -> None:
        """Nothing beyond the common checks."""

    def build_model(self, exp: Experiment) -> nn.Module:
        """The configured classifier; input normalisation from the training images."""
        train = exp.bundle.train
        imgs = train.images[torch.as_tensor(exp.split.train)]
        mean = imgs.mean(dim=(0, 2, 3)).tolist()
        std = imgs.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        m = exp.cfg.model
        model = build_model(
            m.name,
            num_classes=train.num_classes,
            in_channels=train.in_channels,
            image_size=train.image_size,
            width=m.width,
            mean=mean,
            std=std,
        )
        if m.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model.to(self.device)

    def load_model(self, exp: Experiment, path: str | Path) -> nn.Module:
        return load_weights(exp.new_model(), path)

    def save_model(self, exp: Experiment, model: nn.Module, folder: Path) -> Path:
        path = Path(folder) / "model.safetensors"
        save_weights(model, path)
        return path

    def cache_fields(self, cfg: Config) -> dict[str, Any]:
        return {}

    def fit_summary(self, exp: Experiment, model: nn.Module, data: Dataset) -> dict[str, Any]:
        return {"train_acc": predict(model, data, self, exp.cfg.eval.batch_size).accuracy}

    def evaluate(
        self, exp: Experiment, model: nn.Module, out: Path | None = None, tag: str = "samples"
    ) -> dict[str, Any]:
        seed = exp.cfg.seed if exp.cfg.eval.mia_seed is None else exp.cfg.eval.mia_seed
        e = exp.cfg.eval
        return evaluate_classifier(
            model, exp.forget, exp.retain, exp.test, self, seed, e.batch_size, e.extended
        )

    def compare(
        self,
        exp: Experiment,
        model: nn.Module,
        original: nn.Module,
        result: dict[str, Any],
        out: Path,
    ) -> None:
        """The original's metrics, Retrain's, the Avg. Gap, the weight distance to Retrain, the
        noise floor (Retrain') and the Retrain-free estimate, into ``result``."""
        result["original"]["metrics"] = evaluate(exp, original)
        retrain, rinfo = train_model(exp, "retrain")
        result["retrain"] = {"info": rinfo, "metrics": evaluate(exp, retrain)}
        result["gap"] = avg_gap(result["metrics"], result["retrain"]["metrics"])
        result["retrain_distance"] = compare_to_retrain(model, retrain)
        result["noise_floor"] = noise_floor(exp, result["retrain"]["metrics"])
        result["retrain_free_estimate"] = retrain_free_estimate(exp, original, model)


def noise_floor(exp: Experiment, retrain_metrics: dict[str, Any]) -> dict[str, Any]:
    """Retrain' (Retrain from another initialisation seed, cached) and its gap to Retrain: the
    noise floor. A method's gap below ``floor`` cannot be told from Retrain's own variation."""
    model, info = train_model(exp, "retrain_prime")
    metrics = evaluate(exp, model)
    gaps = avg_gap(metrics, retrain_metrics)
    return {
        "floor": gaps["Avg. Gap"],
        "gaps": gaps,
        "metrics": metrics,
        "info": info,
        "init_seed": exp.cfg.seed + RETRAIN_PRIME_OFFSET,
    }


def retrain_free_estimate(exp: Experiment, original: nn.Module, model: nn.Module) -> float | None:
    """The calibration's Retrain-free Avg. Gap estimate of ``model`` (None without a val split)."""
    if exp.val is None:
        return None
    from salun.methods._calibrate import Estimator

    est = Estimator(original, exp.forget, exp.retain, exp.val, exp.task, seed=exp.cfg.seed)
    return float(est(model)["estimate"])
