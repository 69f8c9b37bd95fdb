"""What ``salun list`` and ``--help`` show, without importing torch.

The method registry (:mod:`salun.methods`) imports torch (about 1.7 s); this static table holds
each method's name, display name, tasks and hyperparameter names, so ``salun list`` answers in a
fraction of a second. ``tests/test_catalog.py`` checks it against the real registry, the model
and dataset tables: a method added there without an entry here fails that test.
"""

from __future__ import annotations

GENERIC = ("classification", "ddpm", "text_to_image")
TASKS = GENERIC

#: Hyperparameters every gradient method shares (``methods/_fit.py``'s loop).
_LOOP = (
    "epochs",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "batch_size",
    "schedule",
    "milestones",
    "gamma",
    "grad_clip",
    "calibrate",
    "lr_grid",
)

#: name -> (display name, tasks, hyperparameter names)
METHODS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "bad_teacher": ("Bad Teacher", ("classification",), (*_LOOP, "T", "retain_fraction")),
    "be": ("BE", ("classification",), _LOOP),
    "bs": ("BS", ("classification",), (*_LOOP, "epsilon")),
    "cf_k": ("CF-k", ("classification",), (*_LOOP, "k", "freeze_norm_stats")),
    "esd": ("ESD", ("ddpm", "text_to_image"), (*_LOOP, "eta", "alpha", "train")),
    "eu_k": ("EU-k", ("classification",), (*_LOOP, "k", "freeze_norm_stats")),
    "fisher": (
        "Fisher",
        ("classification",),
        (
            "alpha",
            "form",
            "fisher_min",
            "fisher_max",
            "batch_size",
            "fisher_samples",
            "accepts_mask",
        ),
    ),
    "fmn": ("FMN", ("text_to_image",), (*_LOOP, "train")),
    "ft": ("FT", GENERIC, _LOOP),
    "ga": ("GA", GENERIC, _LOOP),
    "iu": ("IU", ("classification",), ("alpha", "num_grads", "damping", "batch_size")),
    "l1_sparse": ("l1-sparse", GENERIC, (*_LOOP, "alpha")),
    "neggrad_plus": ("NegGrad+", GENERIC, (*_LOOP, "alpha")),
    "retrain": ("Retrain", ("classification", "ddpm"), _LOOP),
    "rl": ("RL", GENERIC, (*_LOOP, "labels")),
    "salun": ("SalUn", GENERIC, (*_LOOP, "form", "labels", "alpha", "mask_ratio")),
    "salun_soft": (
        "SalUn-soft",
        ("classification",),
        (*_LOOP, "form", "mask_ratio", "labels"),
    ),
    "scrub": (
        "SCRUB",
        ("classification",),
        (*_LOOP, "forget_batch_size", "max_steps", "T", "alpha", "ce_weight"),
    ),
    "ssd": ("SSD", ("classification",), ("alpha", "lambda_", "batch_size", "reference")),
    "uce": ("UCE", ("text_to_image",), ("erase_scale", "preserve_scale", "lam", "preserve")),
}

MODELS: tuple[str, ...] = ("resnet18", "vgg16_bn", "cnn")
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "svhn")

#: Rows that are not methods but appear in every table.
_REFERENCE_ROWS = {
    "original": "Original",
    "retrain_prime": "Retrain'",
}


def method_names(task: str | None = None) -> list[str]:
    """Registered method names (sorted), or those that run on ``task``."""
    return sorted(n for n, (_, tasks, _) in METHODS.items() if task is None or task in tasks)


def display_name(name: str) -> str:
    """The one name a method (or a reference row) has in tables, bars and reports:
    ``salun`` -> ``SalUn``, ``l1_sparse`` -> ``l1-sparse``, ``ft`` -> ``FT``. Labels that are
    not method names (bench labels such as ``salun-lr0.005``) keep their method's display name
    as a prefix."""
    if name in METHODS:
        return METHODS[name][0]
    if name in _REFERENCE_ROWS:
        return _REFERENCE_ROWS[name]
    base, sep, rest = name.partition("-")
    if sep and base in METHODS:
        return f"{METHODS[base][0]}-{rest}"
    return name
