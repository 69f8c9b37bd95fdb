"""Pipeline: seed -> data -> split -> original model -> mask -> method -> evaluation -> run folder.

The pipeline knows tasks only through the :class:`salun.tasks.base.Task` protocol (found in
:data:`salun.core.registry.TASKS` by ``cfg.task``): it never branches on a task's name. Original and
Retrain models come from the one cached trainer (:func:`salun.experiment.train_model`), so a
study trains each once. Everything the user can get wrong is checked before the run folder is
made, and the folder is written by the one run-folder writer
(:func:`salun.experiment.run_folder`: staged, then renamed; complete or absent).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salun.attacks import epsilon_score, ulira
from salun.config import Config, save_config
from salun.core import runtime
from salun.core.audit import write_audit
from salun.core.errors import SalunError
from salun.core.io import check_out, hash_state, write_json
from salun.core.registry import TASKS
from salun.data import Split, load_dataset, make_split
from salun.experiment import (  # re-exported: the pipeline's lower half
    MODEL_KINDS,
    RETRAIN_PRIME_OFFSET,
    Experiment,
    cache_lock,
    cache_note,
    check_finite_weights,
    evaluate,
    load_weights,
    recipe_optim,
    reseed,
    retrain_recipe,
    run_folder,
    run_log,
    save_weights,
    seed_everything,
    set_refresh,
    train_model,
    versions,
)
from salun.methods import UnlearnData, check_task, get_method, method_params, run_method, wants_mask
from salun.methods.saliency import SaliencyMask, compute_saliency_mask
from salun.tasks.classification.classification_task import noise_floor, retrain_free_estimate

__all__ = [
    "MODEL_KINDS",
    "RETRAIN_PRIME_OFFSET",
    "Experiment",
    "cache_lock",
    "cache_note",
    "check_finite_weights",
    "evaluate",
    "load_weights",
    "method_uses_mask",
    "noise_floor",
    "population_attacks",
    "prepare",
    "recipe_optim",
    "requested_mask",
    "reseed",
    "retrain_free_estimate",
    "retrain_recipe",
    "run_folder",
    "run_log",
    "run_unlearn",
    "save_calibration",
    "save_weights",
    "seed_everything",
    "set_refresh",
    "train_model",
    "unlearn_in_folder",
    "unlearn_masked",
    "unlearn_once",
    "versions",
]


def prepare(cfg: Config, split_path: str | Path | None = None) -> Experiment:
    """Load data, make (or load) the split, build the task. Raises SalunError on bad input."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = cfg.data
    bundle = load_dataset(d.name, d.data_dir, d.image_size)
    if split_path is not None:
        split = Split.load(split_path)
        if split.dataset != d.name:
            raise SalunError(
                f"split {str(split_path)!r} is for dataset {split.dataset!r}, config says {d.name!r}"
            )
        where = f"split file {str(split_path)!r}"
        split.check(len(bundle.train), len(bundle.test), where)
        split.check_labels(bundle.train.labels.numpy(), bundle.test.labels.numpy(), where)
    else:
        split = make_split(
            bundle.train.labels.numpy(),
            bundle.test.labels.numpy(),
            bundle.train.classes,
            dataset=d.name,
            scenario=d.scenario,
            forget_ratio=d.forget_ratio,
            forget_count=d.forget_count,
            forget_class=d.forget_class,
            val_fraction=d.val_fraction,
            train_subset=d.train_subset,
            test_subset=d.test_subset,
            seed=cfg.seed if d.split_seed is None else d.split_seed,
        )
    task = TASKS.get(cfg.task).from_config(cfg, bundle)
    runtime.bind_task(task)
    runtime.bind_run({**cfg.fingerprint(), "split": split.hash})  # what a checkpoint must match
    return Experiment(cfg, bundle, split, task)


def method_uses_mask(cfg: Config) -> bool:
    """Whether ``cfg.unlearn`` runs with a saliency mask (see :func:`salun.methods.wants_mask`)."""
    return wants_mask(cfg.unlearn.method, cfg.unlearn.use_mask)


def unlearn_masked(
    exp: Experiment,
    original: nn.Module,
    method_name: str,
    params: dict[str, Any] | None = None,
    mask: SaliencyMask | None | bool = None,
) -> tuple[nn.Module, dict[str, Any], SaliencyMask | None]:
    """Copy ``original``, compute the mask (when ``mask is True``), unlearn; time both.

    Returns (model, info, the mask used or None). Retrain is the exception: it trains a fresh
    model with the retrain recipe (cached).
    """
    if method_name == "retrain":
        model, info = train_model(exp, "retrain", recipe=retrain_recipe(exp.cfg, params))
        run = {
            "rte_seconds": info.get("seconds"),
            "mask_seconds": 0.0,
            "resumed": int(info.get("resumed", 0)),
            "retrain": info,
        }
        return model, run, None
    method = get_method(method_name, **(params or {}))
    check_task(method_name, exp.cfg.task)
    model = copy.deepcopy(original)
    reseed(exp, exp.cfg.seed)
    mask_seconds = 0.0
    watch = runtime.Stopwatch()  # with the time before an interruption when resumed
    start = time.perf_counter()
    if mask is True:
        m = exp.cfg.mask
        mask = compute_saliency_mask(
            model, exp.forget, exp.task, m.ratio, m.per_layer, m.batch_size, exp.split.hash
        )
        mask_seconds = time.perf_counter() - start
    elif mask is False:
        mask = None
    data = UnlearnData(forget=exp.forget, retain=exp.retain, seed=exp.cfg.seed, val=exp.val)
    model, calibration = run_method(method, model, data, exp.task, mask)
    total = watch.seconds
    info = {
        "calibration": _calibration_summary(calibration),
        "_calibration": calibration,
        "method": method_name,
        "params": method_params(method),
        "mask": None if mask is None else {**mask.meta, "fraction": mask.fraction},
        "mask_seconds": round(mask_seconds, 4),
        "rte_seconds": round(total, 4),  # every stretch of a resumed run
        "resumed": watch.resumes,
    }
    return model, info, mask


def unlearn_once(
    exp: Experiment,
    original: nn.Module,
    method_name: str,
    params: dict[str, Any] | None = None,
    mask: SaliencyMask | None | bool = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`unlearn_masked` without the mask object (model, info)."""
    model, info, _ = unlearn_masked(exp, original, method_name, params, mask)
    return model, info


def _calibration_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    if "skipped" in record:
        return {"skipped": record["skipped"]}
    return {"scenario": record["scenario"], **record["chosen"]}


def save_calibration(out: Path, record: dict[str, Any] | None) -> None:
    """``calibration.json`` and ``calibration.png`` in a run folder (when calibration ran)."""
    if not record or "skipped" in record:
        return
    from salun.methods._calibrate import plot_calibration

    write_json(out / "calibration.json", record)
    plot_calibration(record, out / "calibration.png")


def population_attacks(
    exp: Experiment,
    method: str,
    params: dict[str, Any],
    mask: Any,
    original: nn.Module,
    model: nn.Module | None,
) -> dict[str, Any]:
    """U-LiRA and the epsilon score when the config asks for them (they train populations).

    ``method`` may be "none" (the original model) or "retrain" besides registered methods.
    """
    e, out = exp.cfg.eval, {}
    if e.ulira:
        out["ulira"] = ulira(
            exp,
            method,
            params,
            use_mask=mask is not None,
            n_shadows=e.ulira_shadows,
            n_targets=e.ulira_targets,
            model_under_test=model,
        )
    if e.epsilon:
        out["epsilon"] = epsilon_score(
            exp,
            method,
            params,
            use_mask=mask if mask is not None else False,
            n_models=e.epsilon_models,
            original=original,
        )
    return out


def requested_mask(
    exp: Experiment, mask_path: str | Path | None, force: bool = False
) -> SaliencyMask | bool | None:
    """A mask file (checked against the model's shapes and the run's forget set: its recorded
    data hash is the split's), or whether the method computes its own.

    The mask's recorded model hash is checked against the original in :func:`unlearn_in_folder`.
    """
    if mask_path is not None:
        mask = SaliencyMask.load(mask_path, exp.new_model())
        mask.meta["file"] = str(mask_path)
        split = exp.split
        forgets = (
            f"class {split.forget_class}"
            if split.forget_class is not None
            else f"{len(split.forget)} random images"
        )
        mask.check_data_hash(split.hash, forgets, force)
        return mask
    return method_uses_mask(exp.cfg)


def unlearn_in_folder(
    exp: Experiment,
    out: Path,
    original: nn.Module | None,
    orig_info: dict[str, Any],
    mask: SaliencyMask | bool | None,
    force: bool = False,
) -> tuple[nn.Module, dict[str, Any], nn.Module, dict[str, Any], SaliencyMask | None]:
    """Save config and split into ``out``, get the original (cached) and unlearn it once.

    Returns (original, its info, unlearned model, run info, the mask used, saved as
    ``mask.safetensors``).
    """
    save_config(exp.cfg, out / "config.yaml")
    exp.split.save(out / "split.json")
    if original is None:
        original, orig_info = train_model(exp, "original")
    if isinstance(mask, SaliencyMask):
        mask.check_model_hash(original, force)
    cfg = exp.cfg
    model, info, mask_obj = unlearn_masked(
        exp, original, cfg.unlearn.method, cfg.unlearn.params, mask
    )
    if mask_obj is not None:
        mask_obj.save(out / "mask.safetensors")
    save_calibration(out, info.pop("_calibration", None))
    return original, orig_info, model, info, mask_obj


def run_unlearn(
    cfg: Config,
    out: str | Path,
    model_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    split_path: str | Path | None = None,
    compare: bool = True,
    overwrite: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """The full pipeline for one method; writes a run folder and returns its metrics.

    The folder is built beside ``out`` and renamed onto it at the end (complete or absent); a
    non-empty ``out`` is refused unless ``overwrite``. A mask made for another model (its
    recorded model hash differs) is refused unless ``force``. ``audit.json`` is written last.
    A task with its own runs (``Task.pipeline``) runs them instead.
    """
    check_out(out, overwrite, [model_path, mask_path, split_path, *cfg.input_paths()])
    runs = TASKS.get(cfg.task).pipeline
    if runs is not None:
        return dict(runs.run_unlearn(cfg, out, model_path, mask_path, split_path, compare, force))
    exp = prepare(cfg, split_path)
    # Check inputs before anything is written.
    original = exp.task.load_model(exp, model_path) if model_path is not None else None
    orig_info: dict[str, Any] = {"checkpoint": str(model_path)} if model_path else {}
    mask = requested_mask(exp, mask_path, force)
    if isinstance(mask, SaliencyMask) and original is not None:
        mask.check_model_hash(original, force)  # before anything is written
    with run_folder(out, log=False) as tmp:
        with run_log(tmp):
            result, model, original = _unlearn_run(
                exp, tmp, original, orig_info, mask, force, compare
            )
        write_audit(  # last: it hashes every file of the folder, log.txt included
            tmp,
            split=exp.split,
            original_hash=hash_state(original),
            result_hash=hash_state(model),
            config=cfg.to_dict(),
            result=result,
        )
    return result


def _unlearn_run(
    exp: Experiment,
    tmp: Path,
    original: nn.Module | None,
    orig_info: dict[str, Any],
    mask: SaliencyMask | bool | None,
    force: bool,
    compare: bool,
) -> tuple[dict[str, Any], nn.Module, nn.Module]:
    cfg = exp.cfg
    original, orig_info, model, info, mask_obj = unlearn_in_folder(
        exp, tmp, original, orig_info, mask, force
    )
    check_finite_weights(model, "the unlearned model")
    exp.task.save_model(exp, model, tmp)
    metrics = exp.task.evaluate(exp, model, tmp, cfg.unlearn.method)
    result: dict[str, Any] = {
        "task": cfg.task,
        "method": cfg.unlearn.method,
        "scenario": cfg.data.scenario,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "split_hash": exp.split.hash,
        "run": info,
        "metrics": metrics,
        "original": {"info": orig_info},
        "versions": versions(),
        **population_attacks(
            exp, cfg.unlearn.method, cfg.unlearn.params, mask_obj, original, model
        ),
    }
    if "forget_class" in metrics:
        result["forget_class"] = metrics["forget_class"]
    if compare:
        exp.task.compare(exp, model, original, result, tmp)
    write_json(tmp / "metrics.json", result)
    return result, model, original
