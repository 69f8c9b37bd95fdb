"""The configuration schema: one dataclass per section, the allowed values of each choice, and
the resolved :class:`Config` saved as ``config.yaml`` in every run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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

    Checked by :func:`salun.tasks.text_to_image.text_to_image_runs.check_config`; see that module for the meaning of each field.
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
    """How every training/unlearning loop runs (not what it computes): see salun.core.runtime."""

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

    def input_paths(self) -> list[str]:
        """The files and folders a run of this config reads or shares (the model cache, the
        data folder, a pipeline or image folder, an I2P CSV, a feature network file): an
        ``--out`` folder may not be or hold one (:func:`salun.core.io.check_out`)."""
        d, t = self.data, self.text_to_image
        paths = [self.cache_dir, d.data_dir, t.image_folder, t.i2p_csv]
        if t.pipeline != "tiny":
            paths.append(t.pipeline)  # a hub id resolves to a folder nobody writes to
        if self.diffusion.fid_features not in ("classifier", "inception"):
            paths.append(self.diffusion.fid_features)
        return [str(p) for p in paths if isinstance(p, str) and p.strip()]

    def fingerprint(self) -> dict[str, Any]:
        """The fields a run's result depends on, flat (``data.forget_class``: 3): every field
        but where and how the run executes (progress, threads, device, cache and data folders,
        checkpoint interval, torch.compile). A checkpoint resumes only a run with the same."""
        skip = {
            "progress",
            "threads",
            "device",
            "cache_dir",
            "data.data_dir",
            "runtime.checkpoint_every",
            "runtime.compile",
        }
        flat: dict[str, Any] = {}

        def walk(prefix: str, tree: Any) -> None:
            if isinstance(tree, dict):
                for k, v in tree.items():
                    walk(f"{prefix}{k}.", v)
            else:
                flat[prefix[:-1]] = tree

        walk("", self.to_dict())
        return {k: v for k, v in flat.items() if k not in skip}


#: The order of the registered checks: the task's section, the method, the bench grid.
