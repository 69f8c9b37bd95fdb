"""Unlearning methods, one file each, one interface:

    method = get_method("salun", lr=0.013)
    model = method.unlearn(model, data, task, mask=None)

``data`` is an :class:`UnlearnData` (forget and retain datasets, a seed). A method is a
dataclass whose fields are its hyperparameters with paper defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from salun.core.checks import check_value, field_types
from salun.core.errors import SalunError, unknown_choice
from salun.core.registry import CONFIG_CHECKS, METHODS

#: Tasks a method runs on when it only calls ``task.loss`` / ``task.relabel`` / ``task.loader``.
GENERIC_TASKS: tuple[str, ...] = ("classification", "ddpm", "text_to_image")


@dataclass
class UnlearnData:
    """What a method may use: the forget set D_f, the retain set D_r, a seed and, for the
    Retrain-free calibration only, a validation split held out of training (never the test set).
    """

    forget: Dataset
    retain: Dataset
    seed: int = 0
    val: Dataset | None = None


def run_method(method: Any, model: Any, data: UnlearnData, task: Any, mask: Any = None):
    """``method.unlearn``, calibrated when the method asks for it (``calibrate=True``).

    Returns ``(model, calibration record or None)``.
    """
    if getattr(method, "calibrate", False):
        from salun.methods._calibrate import calibrated_unlearn

        return calibrated_unlearn(method, model, data, task, mask)
    return method.unlearn(model, data, task, mask=mask), None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a hyperparameter against its annotation (one-line error; NaN and inf refused)."""
    return check_value(value, tp, where)


def get_method(name: str, **params: Any):
    """Instantiate a registered method with ``params`` overriding its defaults."""
    cls = METHODS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in params:
        if key not in fields:
            raise unknown_choice(f"parameter of method {name!r}", key, fields)
    types_ = field_types(cls)
    kwargs = {k: _coerce(v, types_.get(k, Any), f"{name}.{k}") for k, v in params.items()}
    method = cls(**kwargs)
    check = getattr(method, "check", None)
    if check is not None:
        check()
    return method


def list_methods(task: str | None = None) -> list[str]:
    """Registered method names, or those that support ``task``."""
    names = METHODS.names()
    if task is None:
        return names
    family = methods_family(task)
    return [n for n in names if family in method_tasks(METHODS.get(n))]


def methods_family(task_name: str) -> str:
    """The task name methods declare support for: a registered task may take the methods of
    another (``methods_like = "classification"``: its objective behaves like that one's)."""
    from salun.core.registry import TASKS

    if task_name in TASKS:
        return str(getattr(TASKS.get(task_name), "methods_like", None) or task_name)
    return task_name


def method_tasks(method: Any) -> tuple[str, ...]:
    """Tasks a method (class or instance) declares; classification-only when it declares none."""
    return tuple(getattr(method, "tasks", ("classification",)))


def check_task(name: str, task_name: str) -> None:
    """Fail with one line when method ``name`` does not support ``task_name``."""
    cls = METHODS.get(name)
    if methods_family(task_name) not in method_tasks(cls):
        allowed = ", ".join(list_methods(task_name))
        raise SalunError(
            f"method {name!r} does not support task {task_name!r}; methods for {task_name}: {allowed}"
        )


def method_params(method: Any) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(method).items()
    }


def require_nonempty(data: UnlearnData, forget: bool = True, retain: bool = True) -> None:
    if forget and len(data.forget) == 0:  # type: ignore[arg-type]
        raise SalunError("the forget set is empty: there is nothing to unlearn")
    if retain and len(data.retain) == 0:  # type: ignore[arg-type]
        raise SalunError("the retain set is empty")


# -- the mask policy ---------------------------------------------------------------------------
#: What a method does with a saliency mask, declared as ``mask_policy`` on its class:
#: ``required`` (defined by its mask: SalUn), ``optional`` (masked when asked: ``use_mask=true``
#: or a ``--mask`` file), ``refused`` (cannot use one: Retrain trains a fresh model).
MASK_POLICIES = ("required", "optional", "refused")


def mask_policy(method: Any) -> str:
    """The mask policy of a method (class or instance); ``optional`` unless it declares one."""
    policy = getattr(method, "mask_policy", "optional")
    if policy not in MASK_POLICIES:
        raise unknown_choice("mask_policy", policy, MASK_POLICIES)
    return str(policy)


def wants_mask(name: str, use_mask: bool | None = None) -> bool:
    """The one mask decision: does method ``name`` run with a saliency mask, given the user's
    ``use_mask`` (None: the method's own choice)? A contradiction is a one-line error."""
    cls = METHODS.get(name)
    policy = mask_policy(cls)
    if policy == "required":
        if use_mask is False:
            raise SalunError(
                f"unlearn.use_mask=false: method {name!r} is defined by its saliency mask "
                "(without one it is random labelling); use unlearn.method=rl, or drop use_mask"
            )
        return True
    if policy == "refused":
        if use_mask:
            raise SalunError(f"method {name!r} cannot use a saliency mask; drop use_mask")
        return False
    return bool(use_mask)


@CONFIG_CHECKS.register("method")
def check_method_config(cfg: Any) -> None:
    """The method's name, parameters, task and mask choice (one-line errors)."""
    method = get_method(cfg.unlearn.method, **cfg.unlearn.params)  # validates name and params
    check_task(cfg.unlearn.method, cfg.task)
    wants_mask(cfg.unlearn.method, cfg.unlearn.use_mask)
    if mask_policy(method) == "required":
        ratio = cfg.unlearn.params.get("mask_ratio")
        if ratio is not None and float(ratio) != float(cfg.mask.ratio):
            raise SalunError(
                f"unlearn.params.mask_ratio={ratio} conflicts with mask.ratio={cfg.mask.ratio}: "
                "the pipeline's mask uses mask.ratio; set mask.ratio only"
            )
    cfg.unlearn.params = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in ((k, getattr(method, k)) for k in cfg.unlearn.params)
    }


def _import_all() -> None:
    """Import every module of this package so that each method registers itself."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = [
    "GENERIC_TASKS",
    "MASK_POLICIES",
    "UnlearnData",
    "check_task",
    "get_method",
    "list_methods",
    "mask_policy",
    "method_params",
    "method_tasks",
    "run_method",
    "wants_mask",
]
