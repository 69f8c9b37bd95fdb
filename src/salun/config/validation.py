"""Validation of a resolved configuration: choices, ranges, devices, and the checks registered
by the packages that own a method, a task or a bench grid (``CONFIG_CHECKS``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from salun.config.schema import (
    OPTIMIZERS,
    PRECISIONS,
    SCENARIOS,
    SCHEDULES,
    Config,
    TrainConfig,
)
from salun.core.errors import SalunError, unknown_choice
from salun.core.limits import FIELD_RANGES


def _check_choice(kind: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)  # a tuple of names or a Registry
    if value not in allowed:
        raise unknown_choice(kind, value, allowed)


def _check_recipe(t: TrainConfig, where: str) -> None:
    _check_choice(f"{where}.schedule", t.schedule, SCHEDULES)
    _check_choice(f"{where}.optimizer", t.optimizer, OPTIMIZERS)
    if t.epochs < 0 or t.batch_size < 1 or t.lr <= 0:
        raise SalunError(
            f"{where}: epochs must be >= 0, batch_size >= 1, lr > 0 "
            f"(got epochs={t.epochs}, batch_size={t.batch_size}, lr={t.lr})"
        )
    _at_least(f"{where}.momentum", t.momentum, 0)
    _at_least(f"{where}.weight_decay", t.weight_decay, 0)
    _at_least(f"{where}.gamma", t.gamma, 0)
    for m in t.milestones:
        _at_least(f"{where}.milestones", m, 0)


def validate(cfg: Config) -> Config:
    """Check names and ranges that can be checked without loading data.

    Checks that need a registered object (the task's section, the method's parameters and mask
    choice, a bench grid) come from :data:`salun.core.registry.CONFIG_CHECKS`, registered by the
    packages that own those objects: this module knows no methods and no tasks.
    """
    from salun.core.registry import CONFIG_CHECKS, TASKS
    from salun.data import DATASETS
    from salun.models import MODELS

    _check_ranges(cfg)
    _check_choice("task", cfg.task, tuple(TASKS.names()))
    _check_choice("dataset", cfg.data.name, DATASETS)
    _check_choice("model", cfg.model.name, MODELS)
    _check_choice("scenario", cfg.data.scenario, SCENARIOS)
    d = cfg.data
    if d.scenario == "random":
        if d.forget_count is None:
            r = d.forget_ratio
            if r is None or not isinstance(r, int | float) or not 0 < r < 1:
                raise SalunError(f"data.forget_ratio must be in (0, 1), got {r!r}")
        elif not isinstance(d.forget_count, int) or d.forget_count < 1:
            raise SalunError(
                f"data.forget_count must be a positive integer, got {d.forget_count!r}"
            )
    elif d.forget_class is None:
        raise SalunError("data.forget_class is required for scenario=class (an index or a name)")
    if not 0 <= d.val_fraction < 1:
        raise SalunError(f"data.val_fraction must be in [0, 1), got {d.val_fraction!r}")
    if not 0 < cfg.mask.ratio <= 1:
        raise SalunError(f"mask.ratio must be in (0, 1], got {cfg.mask.ratio!r}")
    _check_recipe(cfg.train, "train")
    _check_choice("runtime.precision", cfg.runtime.precision, PRECISIONS)
    ce = cfg.runtime.checkpoint_every
    if not isinstance(ce, int) or isinstance(ce, bool) or ce < 0:
        raise SalunError(f"runtime.checkpoint_every must be an integer >= 0, got {ce!r}")
    _check_recipe(cfg.retrain_recipe, "retrain")
    for name in CONFIG_ORDER:
        CONFIG_CHECKS.get(name)(cfg)
    return cfg


CONFIG_ORDER = ("task", "method", "bench")


def check_choice(kind: str, value: Any, allowed: Iterable[str]) -> None:
    """One-line error unless ``value`` is one of ``allowed`` (for the registered checks)."""
    _check_choice(kind, value, allowed)


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _at_least(where: str, value: Any, low: float, high: float | None = None) -> None:
    if value is not None and (value < low or (high is not None and value > high)):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise SalunError(f"{where} must be {allowed}, got {value!r}")


def check_device(name: str) -> None:
    """Refuse a device this machine does not have before any compute starts."""
    import re

    import torch

    if name in ("auto", "cpu"):
        return
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SalunError(
                "device 'mps' requested but MPS is not available; allowed here: auto, cpu"
            )
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise SalunError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        raise SalunError(
            f"device {name!r} requested but CUDA is not available; allowed here: auto, cpu"
        )
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise SalunError(
            f"device {name!r} does not exist; allowed: cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )


def _field(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _check_ranges(cfg: Config) -> None:
    """Ranges of numeric fields (types are checked when the config is built)."""
    for name, (low, high) in FIELD_RANGES.items():
        _at_least(name, _field(cfg, name), low, high)
    _at_least("threads", cfg.threads, 1)
    check_device(cfg.device)
    _at_least("data.train_subset", cfg.data.train_subset, 1)
    _at_least("data.test_subset", cfg.data.test_subset, 1)
    _at_least("model.width", cfg.model.width, 1)
    _at_least("mask.batch_size", cfg.mask.batch_size, 1)
    e = cfg.eval
    _at_least("eval.batch_size", e.batch_size, 1)
    _at_least("eval.ulira_shadows", e.ulira_shadows, 2)
    _at_least("eval.ulira_targets", e.ulira_targets, 1)
    _at_least("eval.epsilon_models", e.epsilon_models, 1)
    g = cfg.diffusion
    _at_least("diffusion.layers_per_block", g.layers_per_block, 1)
    for name in ("judge_width", "judge_batch_size"):
        _at_least(f"diffusion.{name}", getattr(g, name), 1)
    _at_least("diffusion.judge_epochs", g.judge_epochs, 0)
    _at_least("diffusion.judge_lr", g.judge_lr, 0)
    if g.fid_features != "classifier" and not g.fid_features.endswith(".safetensors"):
        raise SalunError(
            f"diffusion.fid_features must be 'classifier' or a .safetensors feature network, got "
            f"{g.fid_features!r}; executable formats (torch.export, TorchScript, pickles) are "
            "refused because loading them can run code"
        )
    cache = Path(cfg.cache_dir)
    if not cfg.cache_dir or (cache.exists() and not cache.is_dir()):
        raise SalunError(f"cache_dir {cfg.cache_dir!r} is not a folder; give a folder path")
