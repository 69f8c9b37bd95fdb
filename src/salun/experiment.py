"""The pipeline's lower half: an :class:`Experiment` (data, split, task), the one cached
trainer, weights on disk, evaluation through the task, the run log.

Everything here knows tasks only through the :class:`salun.tasks.base.Task` protocol (the
object in ``exp.task``), never by name, so tasks, population attacks and the pipeline
(:mod:`salun.run`) all build on it without import cycles.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from salun.config import Config, TrainConfig
from salun.core import distributed, runtime
from salun.core.checks import first_non_finite
from salun.core.errors import SalunError
from salun.core.io import (
    check_state,
    hash_obj,
    hash_state,
    load_tensors,
    read_metadata,
    save_tensors,
)
from salun.data import DatasetBundle, IndexedDataset, Split
from salun.methods._fit import Optim, fit

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
    task: Any  # an object implementing salun.tasks.base.Task

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
        """A freshly initialised model of the task (seeded)."""
        torch.manual_seed(self.cfg.seed if seed is None else seed)
        return self.task.build_model(self)


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


# -- the one cached trainer ------------------------------------------------------------------
#: Set by ``--retrain`` (CLI) or :func:`set_refresh`: ignore cache entries and replace them.
_REFRESH = {"on": False}


def set_refresh(on: bool) -> None:
    """Re-train cached models (original, Retrain, Retrain', judge, population) and overwrite
    their cache entries instead of loading them."""
    _REFRESH["on"] = bool(on)


def cache_key(kind: str, **fields: Any) -> str:
    """The one cache-key builder: a hash of what a cached model depends on (and torch's version).

    Key order does not matter (sorted JSON); a field that is absent hashes as before it existed.
    """
    return hash_obj({"kind": kind, **fields, "torch": torch.__version__.split("+")[0]})[:20]


def cache_lock(path: Path):
    """An inter-process lock (filelock) next to a cache entry ``path``; rank 0 only under
    torchrun (the other ranks follow its decision, see :func:`cached_train`)."""
    from contextlib import nullcontext

    from filelock import FileLock

    if not distributed.is_main():
        return nullcontext()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SalunError(f"cannot create cache_dir {str(path.parent)!r}: {e.strerror}") from None
    return FileLock(str(path) + ".lock")


def cached_train(
    what: str,
    path: Path | None,
    model: nn.Module,
    train: Callable[[nn.Module], dict[str, Any]],
) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``model`` from the cache entry ``path`` or train it with ``train`` and store it.

    ``train(model)`` trains in place and returns the info recorded as the entry's metadata.
    Returns ``(model, info)`` with ``info["cache_hit"]`` and, on a hit, ``info["cache_path"]``.
    One process trains a given entry; another asking for it waits, then loads the result.
    ``path=None`` trains without a cache.
    """
    if path is None:
        info = train(model)
        info["cache_hit"] = False
        return model, info
    with cache_lock(path):
        # every rank takes rank 0's branch (ranks must enter the same collectives)
        if not _REFRESH["on"] and distributed.agree(path.is_file()):
            load_weights(model, path)
            meta = _check_entry(path, model)
            info = {k: _num(v) for k, v in meta.items() if k not in _ENTRY_KEYS}
            info["cache_hit"] = True
            info["cache_path"] = str(path)
            log.info("%s: loaded from cache %s", what, path)
            return model, info
        info = train(model)
        entry = {"cache_entry": path.name, "weights_sha256": hash_state(model)}
        save_weights(model, path, {**{k: str(v) for k, v in info.items()}, **entry})
        info["cache_hit"] = False
        return model, info


#: What :func:`cached_train` adds to an entry's metadata to recognise it (not part of ``info``).
_ENTRY_KEYS = ("cache_entry", "weights_sha256")


def _check_entry(path: Path, model: nn.Module) -> dict[str, str]:
    """The metadata of the cache entry ``path`` (just loaded into ``model``), refused unless it
    was written for this path with these weights: a file replaced by another model (or copied
    from another entry) would otherwise be used, and its metadata trusted, as this one."""
    meta = read_metadata(path)
    if "cache_entry" in meta:
        if meta["cache_entry"] != path.name:
            reason = f"it was written as {meta['cache_entry']!r}"
        elif meta.get("weights_sha256") != hash_state(model):
            reason = "its weights are not the ones it was written with (sha256 differs)"
        else:
            return meta
    elif meta.get("cache_key") and meta["cache_key"] in path.name:
        return meta  # an entry written before entries recorded their name and weights' hash
    else:
        reason = "its metadata does not name this entry"
    raise SalunError(
        f"cache entry {str(path)!r} was not written by salun for this model ({reason}); "
        "delete it or pass --retrain to train it again"
    )


#: Retrain' (the noise floor) is Retrain from this much larger an initialisation seed.
RETRAIN_PRIME_OFFSET = 1000
MODEL_KINDS = ("original", "retrain", "retrain_prime")


def experiment_cache_key(exp: Experiment, kind: str, indices: np.ndarray, recipe: TrainConfig):
    c = exp.cfg
    r = asdict(recipe)
    if r.get("optimizer") == "sgd":
        r.pop("optimizer")  # keys written before the field existed stay valid
    fields: dict[str, Any] = {
        "dataset": c.data.name,
        "image_size": c.data.image_size,
        "indices": hash_obj(indices.tolist()),
        "model": asdict(c.model),
        "recipe": r,
        "seed": c.seed,
    }
    if c.data.augment:
        fields["augment"] = "crop4+flip"  # absent when off: keys written before the option hold
    fields.update(exp.task.cache_fields(c))
    return cache_key(kind, **fields)


def train_model(
    exp: Experiment,
    kind: str = "original",
    use_cache: bool = True,
    recipe: TrainConfig | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the original model (on ``split.train``), Retrain (on ``split.retain``) or Retrain'
    (``retrain_prime``: Retrain from initialisation seed ``seed + 1000``, same data order).

    Cached under ``cfg.cache_dir`` by (dataset, model, indices, seed, recipe). Returns the model
    and info: seconds, the task's fit summary on the data it was trained on, cache hit.
    ``recipe`` overrides the config's recipe (``unlearn.method=retrain`` with params).
    """
    if kind not in MODEL_KINDS:
        raise SalunError(f"unknown model kind {kind!r}; allowed: {', '.join(MODEL_KINDS)}")
    if recipe is None:
        recipe = exp.cfg.train if kind == "original" else exp.cfg.retrain_recipe
    indices = exp.split.train if kind == "original" else exp.split.retain
    key = experiment_cache_key(exp, kind, indices, recipe)
    path = Path(exp.cfg.cache_dir) / f"{kind}-{key}.safetensors" if use_cache else None
    init_seed = exp.cfg.seed + (RETRAIN_PRIME_OFFSET if kind == "retrain_prime" else 0)

    def train(model: nn.Module) -> dict[str, Any]:
        reseed(exp, exp.cfg.seed)
        data = IndexedDataset(exp.bundle.train, indices)
        train_data: Any = data
        if exp.cfg.data.augment:
            from salun.data.augment import Augmented

            train_data = Augmented(data)
        loader = exp.task.loader(train_data, recipe.batch_size, True, exp.cfg.seed)
        watch = runtime.Stopwatch()  # with the time before an interruption when resumed
        fit(
            model,
            lambda e: [(loader, exp.task.loss)],
            recipe_optim(recipe),
            None,
            exp.task.progress,
            f"train {kind}",
        )
        seconds = watch.seconds
        info: dict[str, Any] = {"seconds": round(seconds, 3), "cache_key": key}
        if watch.resumes:
            info["resumed"] = watch.resumes
        info.update(exp.task.fit_summary(exp, model, data))
        log.info("%s model trained in %.1fs: %s", kind, seconds, info)
        return info

    return cached_train(f"{kind} model", path, exp.new_model(init_seed), train)


def cache_note(kind: str, info: dict[str, Any]) -> str | None:
    """The line the CLI prints for a model that came from the cache (None when trained)."""
    if not info.get("cache_hit"):
        return None
    seconds = info.get("seconds")
    took = f" (trained in {seconds:.1f} s)" if isinstance(seconds, int | float) else ""
    return f"{kind}: loaded from cache {info.get('cache_path')}{took}"


def _num(v: str) -> Any:
    try:
        return float(v)
    except ValueError:
        return v


# -- weights on disk ---------------------------------------------------------------------------
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
    check_state(state, model.state_dict(), f"checkpoint {str(path)!r}")
    model.load_state_dict(state)
    return model


def check_finite_weights(model: nn.Module, what: str = "the model") -> None:
    """Refuse to evaluate a model with NaN or inf weights (it would look perfectly forgotten)."""
    name = first_non_finite(model.state_dict())
    if name is not None:
        raise SalunError(
            f"{what} has non-finite weights (NaN or inf) in {name!r}; refusing to evaluate it"
        )


# -- evaluation --------------------------------------------------------------------------------
def evaluate(exp: Experiment, model: nn.Module) -> dict[str, Any]:
    """The task's metrics of ``model`` on the split (finite weights checked first)."""
    check_finite_weights(model)
    return exp.task.evaluate(exp, model)


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


# -- run folders ---------------------------------------------------------------------------------
@contextmanager
def run_log(out: Path) -> Iterator[None]:
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


@contextmanager
def run_folder(out: str | Path, log: bool = True) -> Iterator[Path]:
    """The one run-folder writer: a staged ``.NAME.partial-*`` sibling (marked INCOMPLETE),
    renamed onto ``out`` when the block ends without error (:func:`salun.core.io.staged_folder`:
    the folder is complete or absent), with the run log in ``log.txt`` unless ``log=False``
    (the caller opens :func:`run_log` itself to write ``audit.json`` after it). Yields the
    folder to write into."""
    from contextlib import nullcontext

    from salun.core.io import staged_folder

    with staged_folder(out) as tmp, run_log(tmp) if log else nullcontext():
        yield tmp


def versions() -> dict[str, str]:
    import sklearn

    import salun

    return {"salun": salun.__version__, "torch": torch.__version__, "sklearn": sklearn.__version__}
