"""Typed run configuration: dataclass schemas, YAML presets, ``key=value`` overrides.

A config is resolved once (preset -> overrides -> validation) and saved as ``config.yaml`` in every
run folder, so a run can be reproduced from that file alone. Unknown keys and bad values fail
loudly with a one-line :class:`~salun.errors.SalunError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from salun.checks import check_value, field_types
from salun.errors import SalunError, unknown_choice

SCENARIOS = ("random", "class")
SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "adam8bit")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    """Dataset and forgetting scenario. One persisted split is derived from these fields."""

    name: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # resize; None keeps the native size (digits: 16)
    train_subset: int | None = None  # use at most this many training images (stratified)
    test_subset: int | None = None
    val_fraction: float = 0.0  # held out of the training pool, never trained on (calibration)
    augment: bool = False  # random crop (4-px padding) + flip when training original / Retrain
    scenario: str = "random"  # random | class
    forget_ratio: float | None = 0.1  # random forgetting: share of the training set
    forget_count: int | None = None  # random forgetting: exact number (overrides the ratio)
    forget_class: int | str | None = None  # class-wise forgetting: index or class name
    split_seed: int | None = None  # None: use the run seed


@dataclass
class ModelConfig:
    name: str = "cnn"
    width: int = 16
    channels_last: bool = False


@dataclass
class TrainConfig:
    """Recipe for the original model and for Retrain (SGD with a schedule)."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"  # constant | step | cosine
    milestones: list[int] = field(default_factory=list)  # for schedule=step (epochs)
    gamma: float = 0.1
    optimizer: str = "sgd"  # sgd | adam | adamw


@dataclass
class MaskConfig:
    """Weight saliency (SalUn §4): top ``ratio`` of |grad of the forgetting loss|."""

    ratio: float = 0.5
    per_layer: bool = False
    batch_size: int = 256


@dataclass
class UnlearnConfig:
    method: str = "salun"
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the method's defaults
    use_mask: bool | None = None  # None: the method's own choice (SalUn: yes, others: no)


@dataclass
class EvalConfig:
    batch_size: int = 512
    mia_seed: int | None = None  # None: use the run seed
    extended: bool = True  # MIA family (entropy, m-entropy, loss-LR) and ZRF as well
    ulira: bool = False  # U-LiRA with shadow models (costs ulira_shadows trainings)
    ulira_shadows: int = 8
    ulira_targets: int = 50
    epsilon: bool = False  # NeurIPS 2023 challenge epsilon score (costs 2 x epsilon_models runs)
    epsilon_models: int = 4


@dataclass
class DiffusionConfig:
    """Class-conditional DDPM (``task: ddpm``): UNet, noise schedule, guidance, evaluation."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # UNet channels per level
    layers_per_block: int = 1
    attention: bool = False  # self-attention at the lowest resolution
    timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | cosine
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    guidance: float = 2.0  # w in eps = (1 + w) eps(x, c) - w eps(x, null)
    sampler: str = "ddim"  # ddim | ddpm
    sample_steps: int = 50
    samples_per_class: int = 50  # evaluation samples per class
    relabel: str = "next"  # c' for the forget class: next | random
    target: str = "current"  # relabelling target from the current model or a frozen copy
    # classifier (the judge's penultimate features) | path to a .safetensors feature network
    # written by salun.eval.fid.save_feature_network (an architecture salun builds in code)
    fid_features: str = "classifier"
    fid_input_size: int = 0  # resize for a feature network file (0: its recorded image size)
    judge_model: str = "cnn"  # the classifier that judges samples (trained on the same data)
    judge_width: int = 16
    judge_epochs: int = 30
    judge_lr: float = 0.05
    judge_batch_size: int = 128


@dataclass
class TextToImageConfig:
    """Stable Diffusion (``task: text_to_image``): pipeline, forget/retain prompts, options.

    Checked by :func:`salun.t2i_run.check_config`; see that module for the meaning of each field.
    """

    pipeline: str = "tiny"  # diffusers folder or hub id; "tiny": a small pipeline built in code
    scenario: str = "concept"  # concept | class
    forget_prompts: list[str] = field(default_factory=lambda: ["a photo of a nude person"])
    retain_prompts: list[str] = field(
        default_factory=lambda: ["a photo of a person wearing clothes"]
    )
    classes: list[str] = field(default_factory=list)  # class-wise: class names
    template: str = "an image of {}"  # class-wise prompt
    forget_class: int | str | None = None  # class-wise: index or name
    image_folder: str | None = None  # forget/ and retain/ captioned images instead of generation
    forget_size: int = 800
    retain_size: int = 800
    guidance: float = 7.5
    steps: int = 50
    generate_batch_size: int = 8
    relabel: str | None = None  # c': retain | null | next | random (None: retain / next)
    target: str = "current"  # current | frozen
    p_uncond: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    gradient_checkpointing: bool = False
    eval_prompts: list[str] = field(default_factory=list)  # paraphrases sampled after unlearning
    eval_samples: int = 4
    i2p_csv: str | None = None  # NudeNet on an I2P-format prompt CSV (prompt, seed, guidance)
    nudenet_thresholds: list[float] = field(default_factory=lambda: [0.6, 0.45])


@dataclass
class BenchConfig:
    """A study grid: scenarios x seeds x methods (list-valued method parameters expand)."""

    seeds: list[int] = field(default_factory=lambda: [0])
    # scenario name -> overrides of this config (dotted keys, e.g. {"data.forget_ratio": 0.5})
    scenarios: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    # label -> method parameters; optional keys "method" (default: the label) and "use_mask"
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """How every training/unlearning loop runs (not what it computes): see salun.runtime."""

    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    compile: bool = False  # torch.compile the model for the loop
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    checkpoint_every: int = 0  # steps between checkpoints in the run folder (0: end of loop)


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    threads: int | None = None
    task: str = "classification"  # a registered task (salun list tasks)
    cache_dir: str = "runs/cache"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: TrainConfig | None = None  # None: same recipe as train
    mask: MaskConfig = field(default_factory=MaskConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text_to_image: TextToImageConfig = field(default_factory=TextToImageConfig)
    bench: BenchConfig | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def retrain_recipe(self) -> TrainConfig:
        return self.retrain if self.retrain is not None else self.train

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, type-checking every field from its annotation."""
    if not isinstance(data, dict):
        raise SalunError(f"{where or 'config'} must be a mapping, got {data!r}")
    names = {f.name: f for f in fields(cls)}
    types_ = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise unknown_choice(f"config key in {where or 'config'}", key, names)
        f = names[key]
        sub = _nested_type(cls, f)
        here = f"{where}.{key}".strip(".")
        if sub is not None and value is not None:
            kwargs[key] = _from_dict(sub, value, here)
        else:
            kwargs[key] = check_value(value, types_.get(key, Any), here)
    return cls(**kwargs)


_NESTED = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "retrain": TrainConfig,
    "mask": MaskConfig,
    "unlearn": UnlearnConfig,
    "eval": EvalConfig,
    "diffusion": DiffusionConfig,
    "text_to_image": TextToImageConfig,
    "bench": BenchConfig,
    "runtime": RuntimeConfig,
}


def _nested_type(cls: type, f: dataclasses.Field) -> type | None:
    return _NESTED.get(f.name) if cls is Config else None


def preset_names() -> list[str]:
    root = resources.files("salun") / "configs"
    out = []
    for sub in ("", "smoke/"):
        folder = root / sub if sub else root
        for p in folder.iterdir():
            if p.name.endswith(".yaml"):
                out.append(sub + p.name[: -len(".yaml")])
    return sorted(out)


def _yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{at}".split())


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # syntax errors, and tags such as !!python/object (refused)
        raise SalunError(f"{what} is not valid YAML: {_yaml_error(e)}") from None


def _read_preset(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SalunError(f"config file {name!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SalunError(
                f"config file {name!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
            ) from None
        except OSError as e:
            raise SalunError(f"cannot read config file {name!r}: {e.strerror}") from None
        what = f"config file {name!r}"
    else:
        if name not in preset_names():
            raise unknown_choice("preset", name, preset_names())
        text = (resources.files("salun") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
        what = f"preset {name!r}"
    data = _parse_yaml(text, what) or {}
    if not isinstance(data, dict):
        raise SalunError(f"{what} is not a mapping of config keys")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SalunError(f"override {item!r} is not key=value (e.g. unlearn.method=ga)")
    key, raw = item.split("=", 1)
    if not key or "" in key.split("."):
        raise SalunError(f"override {item!r} has an empty key")
    return key.split("."), _parse_yaml(raw, f"override {item!r}") if raw != "" else None


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a preset name or YAML path plus ``key=value`` overrides into a checked Config."""
    tree: dict[str, Any] = _read_preset(preset) if preset else {}
    parsed = [parse_override(item) for item in overrides or []]
    preset_unlearn = dict(tree["unlearn"]) if isinstance(tree.get("unlearn"), dict) else {}
    for keys, value in parsed:
        _set(tree, keys, value)
    _drop_foreign_params(tree, preset_unlearn, [keys for keys, _ in parsed])
    return validate(_from_dict(Config, tree, ""))


def _drop_foreign_params(
    tree: dict[str, Any], preset_unlearn: dict[str, Any], override_keys: list[list[str]]
) -> None:
    """Preset ``unlearn.params`` belong to the preset's method: when an override switches
    ``unlearn.method`` to another one, they are dropped (logged), so they never leak to it.
    Parameters the user gave as overrides stay (and a wrong one is a one-line error)."""
    unlearn = tree.get("unlearn")
    if not isinstance(unlearn, dict) or ["unlearn", "method"] not in override_keys:
        return
    old = preset_unlearn.get("method", UnlearnConfig.method)
    params = unlearn.get("params")
    if unlearn.get("method") == old or not isinstance(params, dict):
        return
    if ["unlearn", "params"] in override_keys:
        return  # the whole params mapping was given on the command line
    user = {k[2] for k in override_keys if len(k) == 3 and k[:2] == ["unlearn", "params"]}
    dropped = sorted(k for k in params if k not in user)
    if dropped:
        logging.getLogger(__name__).info(
            "unlearn.method=%s: dropping the preset's unlearn.params of %s (%s)",
            unlearn.get("method"),
            old,
            ", ".join(dropped),
        )
        unlearn["params"] = {k: v for k, v in params.items() if k in user}


def config_from_dict(tree: dict[str, Any]) -> Config:
    return validate(_from_dict(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    from salun.io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


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
    choice, a bench grid) come from :data:`salun.registry.CONFIG_CHECKS`, registered by the
    packages that own those objects: this module knows no methods and no tasks.
    """
    from salun.data import DATASETS
    from salun.models import MODELS
    from salun.registry import CONFIG_CHECKS, TASKS

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


#: The order of the registered checks: the task's section, the method, the bench grid.
CONFIG_ORDER = ("task", "method", "bench")


def check_choice(kind: str, value: Any, allowed: Iterable[str]) -> None:
    """One-line error unless ``value`` is one of ``allowed`` (for the registered checks)."""
    _check_choice(kind, value, allowed)


MAX_SEED = 2**32 - 1
MAX_IMAGE_SIZE = 4096
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


def _check_ranges(cfg: Config) -> None:
    """Ranges of numeric fields (types are checked when the config is built)."""
    _at_least("seed", cfg.seed, 0, MAX_SEED)
    _at_least("data.split_seed", cfg.data.split_seed, 0, MAX_SEED)
    _at_least("eval.mia_seed", cfg.eval.mia_seed, 0, MAX_SEED)
    _at_least("threads", cfg.threads, 1)
    check_device(cfg.device)
    _at_least("data.image_size", cfg.data.image_size, 1, MAX_IMAGE_SIZE)
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
    _at_least("diffusion.fid_input_size", g.fid_input_size, 0, MAX_IMAGE_SIZE)
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
