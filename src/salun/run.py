"""Pipeline: seed -> data -> split -> original model -> mask -> method -> evaluation -> run folder.

Original and Retrain models are cached by (dataset, model, split, seed, recipe), so a study
trains each once. Everything the user can get wrong is checked before the run folder is made.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from salun import distributed, runtime
from salun.audit import write_audit
from salun.config import Config, TrainConfig, save_config
from salun.data import DatasetBundle, IndexedDataset, Split, load_dataset, make_split
from salun.errors import SalunError
from salun.eval import avg_gap, compare_to_retrain, evaluate_classifier
from salun.eval.accuracy import predict
from salun.io import (
    check_out,
    hash_obj,
    hash_state,
    load_tensors,
    read_metadata,
    save_tensors,
    staged_folder,
    write_json,
)
from salun.methods import UnlearnData, check_task, get_method, method_params, run_method
from salun.methods._fit import Optim, fit
from salun.models import build_model
from salun.saliency import SaliencyMask, compute_saliency_mask
from salun.tasks.classification import ClassificationTask, resolve_device

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Experiment:
    """Data, split and task of one configuration; the split is shared by every step."""

    cfg: Config
    bundle: DatasetBundle
    split: Split
    task: Any  # ClassificationTask or DiffusionTask

    def subset(self, part: str) -> IndexedDataset:
        data = self.bundle.test if part == "test" else self.bundle.train
        return IndexedDataset(data, getattr(self.split, part))

    @property
    def forget(self) -> IndexedDataset:
        return self.subset("forget")

    @property
    def retain(self) -> IndexedDataset:
        return self.subset("retain")

    @property
    def test(self) -> IndexedDataset:
        return self.subset("test")

    @property
    def train(self) -> IndexedDataset:
        return self.subset("train")

    @property
    def val(self) -> IndexedDataset | None:
        """The validation split (held out of training), or None when there is none."""
        return self.subset("val") if len(self.split.val) else None

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model (seeded); normalisation from the training images."""
        train = self.bundle.train
        imgs = train.images[torch.as_tensor(self.split.train)]
        mean = imgs.mean(dim=(0, 2, 3)).tolist()
        std = imgs.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        torch.manual_seed(self.cfg.seed if seed is None else seed)
        if self.cfg.task == "ddpm":
            from salun.models.unet import build_unet

            g = self.cfg.diffusion
            unet = build_unet(
                train.image_size,
                train.in_channels,
                train.num_classes,
                g.widths,
                g.layers_per_block,
                g.attention,
            )
            return unet.to(self.task.device)
        m = self.cfg.model
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
        return model.to(self.task.device)


def prepare(cfg: Config, split_path: str | Path | None = None) -> Experiment:
    """Load data and make (or load) the split. Raises SalunError on any bad input."""
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
        split.check(len(bundle.train), len(bundle.test), f"split file {str(split_path)!r}")
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
    task: Any
    if cfg.task == "ddpm":
        from salun.tasks.ddpm import DiffusionTask, make_scheduler

        g = cfg.diffusion
        task = DiffusionTask(
            num_classes=bundle.train.num_classes,
            scheduler=make_scheduler(g.timesteps, g.beta_schedule),
            device=resolve_device(cfg.device),
            progress=cfg.progress,
            p_uncond=g.p_uncond,
            relabel_mode=g.relabel,
            target=g.target,
            seed=cfg.seed,
        )
    else:
        task = ClassificationTask(
            num_classes=bundle.train.num_classes,
            device=resolve_device(cfg.device),
            progress=cfg.progress,
            channels_last=cfg.model.channels_last,
        )
    runtime.bind_task(task)
    return Experiment(cfg, bundle, split, task)


def reseed(exp: Experiment, seed: int) -> None:
    """Seed the global RNGs and the task's own generator (diffusion time steps and noise)."""
    seed_everything(seed)
    if hasattr(exp.task, "reseed"):
        exp.task.reseed(seed)


def recipe_optim(t: TrainConfig) -> Optim:
    return Optim(
        epochs=t.epochs,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        batch_size=t.batch_size,
        schedule=t.schedule,
        milestones=tuple(t.milestones),
        gamma=t.gamma,
        optimizer=t.optimizer,
    )


def _cache_key(exp: Experiment, kind: str, indices: np.ndarray, recipe: TrainConfig) -> str:
    c = exp.cfg
    r = asdict(recipe)
    if r.get("optimizer") == "sgd":
        r.pop("optimizer")  # keys written before the field existed stay valid
    key: dict[str, Any] = {
        "kind": kind,
        "dataset": c.data.name,
        "image_size": c.data.image_size,
        "indices": hash_obj(indices.tolist()),
        "model": asdict(c.model),
        "recipe": r,
        "seed": c.seed,
        "torch": torch.__version__.split("+")[0],
    }
    if c.data.augment:
        key["augment"] = "crop4+flip"  # absent when off: keys written before the option hold
    if c.task == "ddpm":
        g = c.diffusion
        key["model"] = {
            "unet": [list(g.widths), g.layers_per_block, g.attention],
            "schedule": [g.timesteps, g.beta_schedule, g.p_uncond],
        }
        key["task"] = "ddpm"
    return hash_obj(key)[:20]


#: Retrain' (the noise floor) is Retrain from this much larger an initialisation seed.
RETRAIN_PRIME_OFFSET = 1000
MODEL_KINDS = ("original", "retrain", "retrain_prime")


def train_model(
    exp: Experiment,
    kind: str = "original",
    use_cache: bool = True,
    recipe: TrainConfig | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the original model (on ``split.train``), Retrain (on ``split.retain``) or Retrain'
    (``retrain_prime``: Retrain from initialisation seed ``seed + 1000``, same data order).

    Cached under ``cfg.cache_dir`` by (dataset, model, indices, seed, recipe). Returns the model
    and info: seconds, training accuracy on the data it was trained on, cache hit.
    ``recipe`` overrides the config's recipe (``unlearn.method=retrain`` with params).
    """
    if kind not in MODEL_KINDS:
        raise SalunError(f"unknown model kind {kind!r}; allowed: {', '.join(MODEL_KINDS)}")
    if recipe is None:
        recipe = exp.cfg.train if kind == "original" else exp.cfg.retrain_recipe
    indices = exp.split.train if kind == "original" else exp.split.retain
    key = _cache_key(exp, kind, indices, recipe)
    path = Path(exp.cfg.cache_dir) / f"{kind}-{key}.safetensors"
    if not use_cache:
        return _train(exp, kind, recipe, indices, key, None)
    # One process trains a given model; another asking for it waits, then loads the result.
    with cache_lock(path):
        return _train(exp, kind, recipe, indices, key, path)


def cache_lock(path: Path):
    """An inter-process lock (filelock) next to a cache entry ``path``; rank 0 only under
    torchrun (the other ranks follow its decision, see :func:`_train`)."""
    from contextlib import nullcontext

    from filelock import FileLock

    if not distributed.is_main():
        return nullcontext()

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SalunError(f"cannot create cache_dir {str(path.parent)!r}: {e.strerror}") from None
    return FileLock(str(path) + ".lock")


def _train(
    exp: Experiment,
    kind: str,
    recipe: TrainConfig,
    indices: np.ndarray,
    key: str,
    path: Path | None,
) -> tuple[nn.Module, dict[str, Any]]:
    init_seed = exp.cfg.seed + (RETRAIN_PRIME_OFFSET if kind == "retrain_prime" else 0)
    model = exp.new_model(init_seed)
    # every rank takes rank 0's branch (ranks must enter the same collectives)
    if path is not None and distributed.agree(path.is_file()):
        load_weights(model, path)
        info: dict[str, Any] = {k: _num(v) for k, v in read_metadata(path).items()}
        info["cache_hit"] = True
        log.info("%s model from cache %s", kind, path)
        return model, info
    reseed(exp, exp.cfg.seed)
    data = IndexedDataset(exp.bundle.train, indices)
    train_data: Any = data
    if exp.cfg.data.augment:
        from salun.data.augment import Augmented

        train_data = Augmented(data)
    loader = exp.task.loader(train_data, recipe.batch_size, True, exp.cfg.seed)
    start = time.perf_counter()
    fit(
        model,
        lambda e: [(loader, exp.task.loss)],
        recipe_optim(recipe),
        None,
        exp.task.progress,
        f"train {kind}",
    )
    seconds = time.perf_counter() - start
    info = {"seconds": round(seconds, 3), "cache_key": key}
    if exp.cfg.task == "ddpm":
        info["train_mse"] = exp.task.mean_loss(model, data)
        log.info("%s DDPM trained in %.1fs, noise MSE %.4f", kind, seconds, info["train_mse"])
    else:
        info["train_acc"] = predict(model, data, exp.task, exp.cfg.eval.batch_size).accuracy
        log.info(
            "%s model trained in %.1fs, train accuracy %.2f%%", kind, seconds, info["train_acc"]
        )
    if path is not None:
        save_weights(model, path, {k: str(v) for k, v in info.items()})
    info["cache_hit"] = False
    return model, info


def _num(v: str) -> Any:
    try:
        return float(v)
    except ValueError:
        return v


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    save_tensors(path, model.state_dict(), metadata)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights; a missing file or a mismatch is a one-line SalunError."""
    path = Path(path)
    if not path.is_file():
        raise SalunError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = load_tensors(path)
    except Exception as e:
        raise SalunError(f"checkpoint {str(path)!r} is not a readable safetensors file: {e}") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        raise SalunError(
            f"checkpoint {str(path)!r} does not match the model: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {bad[:3]}"
        )
    bad_values = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad_values:
        raise SalunError(
            f"checkpoint {str(path)!r} holds non-finite values (NaN or inf) in {bad_values[0]!r}; "
            "refusing to use it"
        )
    model.load_state_dict(state)
    return model


def method_uses_mask(cfg: Config) -> bool:
    method = get_method(cfg.unlearn.method, **cfg.unlearn.params)
    if cfg.unlearn.use_mask is not None:
        return bool(cfg.unlearn.use_mask)
    return bool(getattr(method, "uses_mask", False))


def unlearn_once(
    exp: Experiment,
    original: nn.Module,
    method_name: str,
    params: dict[str, Any] | None = None,
    mask: SaliencyMask | None | bool = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Copy ``original``, compute the mask (when ``mask is True``), unlearn; time both.

    Retrain is the exception: it trains a fresh model with the retrain recipe (cached).
    """
    if method_name == "retrain":
        model, info = train_model(exp, "retrain", recipe=retrain_recipe(exp.cfg, params))
        return model, {"rte_seconds": info.get("seconds"), "mask_seconds": 0.0, "retrain": info}
    method = get_method(method_name, **(params or {}))
    check_task(method_name, exp.cfg.task)
    model = copy.deepcopy(original)
    reseed(exp, exp.cfg.seed)
    mask_seconds = 0.0
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
    total = time.perf_counter() - start
    return model, {
        "calibration": _calibration_summary(calibration),
        "_calibration": calibration,
        "method": method_name,
        "params": method_params(method),
        "mask": None if mask is None else {**mask.meta, "fraction": mask.fraction},
        "mask_seconds": round(mask_seconds, 4),
        "rte_seconds": round(total, 4),
        "_mask_obj": mask,
    }


def check_finite_weights(model: nn.Module, what: str = "the model") -> None:
    """Refuse to evaluate a model with NaN or inf weights (it would look perfectly forgotten)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise SalunError(
                f"{what} has non-finite weights (NaN or inf) in {name!r}; refusing to evaluate it"
            )


def retrain_recipe(cfg: Config, params: dict[str, Any] | None) -> TrainConfig:
    """The retrain recipe, with ``unlearn.params`` of method 'retrain' overriding its fields."""
    recipe = copy.deepcopy(cfg.retrain_recipe)
    allowed = {f for f in asdict(recipe)}
    for key, value in (params or {}).items():
        if key not in allowed:
            raise SalunError(
                f"retrain parameter {key!r} is not part of a training recipe; allowed: "
                + ", ".join(sorted(allowed))
            )
        setattr(recipe, key, list(value) if isinstance(value, tuple) else value)
    return recipe


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


def retrain_free_estimate(exp: Experiment, original: nn.Module, model: nn.Module) -> float | None:
    """The calibration's Retrain-free Avg. Gap estimate of ``model`` (None without a val split)."""
    if exp.val is None or exp.cfg.task != "classification":
        return None
    from salun.methods._calibrate import Estimator

    est = Estimator(original, exp.forget, exp.retain, exp.val, exp.task, seed=exp.cfg.seed)
    return float(est(model)["estimate"])


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


def evaluate(exp: Experiment, model: nn.Module) -> dict[str, Any]:
    check_finite_weights(model)
    if exp.cfg.task == "ddpm":
        from salun.ddpm import evaluate_ddpm

        return evaluate_ddpm(exp, model)[0]
    seed = exp.cfg.seed if exp.cfg.eval.mia_seed is None else exp.cfg.eval.mia_seed
    e = exp.cfg.eval
    return evaluate_classifier(
        model, exp.forget, exp.retain, exp.test, exp.task, seed, e.batch_size, e.extended
    )


@contextmanager
def run_log(out: Path):
    """Copy the library's log records into ``out/log.txt`` for the duration of a run."""
    if not distributed.is_main():  # under torchrun only rank 0 writes the run folder
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("salun")
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    from salun.methods._fit import recording

    try:
        with recording(out / "history.jsonl"):  # one JSON line per training/unlearning epoch
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


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
    from salun.eval.epsilon import epsilon_score
    from salun.eval.lira import ulira

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


def versions() -> dict[str, str]:
    import sklearn

    import salun

    return {"salun": salun.__version__, "torch": torch.__version__, "sklearn": sklearn.__version__}


def requested_mask(exp: Experiment, mask_path: str | Path | None) -> SaliencyMask | bool | None:
    """A mask file (checked against the model's shapes), or whether the method computes its own.

    The mask's recorded model hash is checked against the original in :func:`unlearn_in_folder`.
    """
    if mask_path is not None:
        mask = SaliencyMask.load(mask_path, exp.new_model())
        mask.meta["file"] = str(mask_path)
        return mask
    return None if exp.cfg.unlearn.method == "retrain" else method_uses_mask(exp.cfg)


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
    model, info = unlearn_once(exp, original, cfg.unlearn.method, cfg.unlearn.params, mask)
    mask_obj = info.pop("_mask_obj", None)
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
    """
    check_out(out, overwrite)
    if cfg.task == "ddpm":
        from salun.ddpm import run_unlearn_ddpm

        return run_unlearn_ddpm(cfg, out, model_path, mask_path, split_path, compare, force)
    if cfg.task == "text_to_image":
        from salun.t2i_run import run_unlearn_t2i

        return run_unlearn_t2i(cfg, out, model_path, mask_path, compare)
    exp = prepare(cfg, split_path)
    # Check inputs before anything is written.
    original = load_weights(exp.new_model(), model_path) if model_path is not None else None
    orig_info: dict[str, Any] = {"checkpoint": str(model_path)} if model_path else {}
    mask = requested_mask(exp, mask_path)
    with staged_folder(out) as tmp:
        with run_log(tmp):
            original, orig_info, model, info, mask_obj = unlearn_in_folder(
                exp, tmp, original, orig_info, mask, force
            )
            save_weights(model, tmp / "model.safetensors")
            result: dict[str, Any] = {
                "method": cfg.unlearn.method,
                "scenario": cfg.data.scenario,
                "dataset": cfg.data.name,
                "seed": cfg.seed,
                "split_hash": exp.split.hash,
                "run": info,
                "metrics": evaluate(exp, model),
                "original": {"info": orig_info},
                "versions": versions(),
                **population_attacks(
                    exp, cfg.unlearn.method, cfg.unlearn.params, mask_obj, original, model
                ),
            }
            if compare:
                result["original"]["metrics"] = evaluate(exp, original)
                retrain, rinfo = train_model(exp, "retrain")
                result["retrain"] = {"info": rinfo, "metrics": evaluate(exp, retrain)}
                result["gap"] = avg_gap(result["metrics"], result["retrain"]["metrics"])
                result["retrain_distance"] = compare_to_retrain(model, retrain)
                result["noise_floor"] = noise_floor(exp, result["retrain"]["metrics"])
                result["retrain_free_estimate"] = retrain_free_estimate(exp, original, model)
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
