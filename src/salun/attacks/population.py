"""Populations of models for attack-based unlearning evaluation.

Shared by U-LiRA (Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a
False Sense of Privacy", 2024; :mod:`salun.attacks.lira`) and the NeurIPS 2023 Machine Unlearning
Challenge score (Triantafillou et al., "Are we making progress in unlearning? Findings from the
first NeurIPS unlearning competition", 2024; :mod:`salun.attacks.epsilon`). Objective: train and
unlearn many seeded models under one protocol and read one scalar per (model, example) from each.

*Pool keys* name examples of both parts of a dataset: key ``k < len(bundle.train)`` is training
image ``k``; key ``len(bundle.train) + j`` is test image ``j``. Plain training indices are
therefore valid keys. Attacks need examples that the model under test never saw; when the
training part has none left over they come from the test part, hence the keys.

The feature read from a model is LiRA's logit-scaled confidence (Carlini et al., "Membership
Inference Attacks From First Principles", IEEE S&P 2022), computed exactly from the logits z:
    phi(x, y) = log(p_y / (1 - p_y)) = z_y - logsumexp_{k != y} z_k   (float64).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from salun.config import TrainConfig
from salun.core.errors import SalunError
from salun.core.io import hash_obj
from salun.data import IndexedDataset
from salun.methods import UnlearnData, get_method
from salun.methods._fit import fit
from salun.methods.saliency import SaliencyMask, compute_saliency_mask

log = logging.getLogger(__name__)

NOOP = "none"  # "do nothing": the unlearned model is the original (a baseline, not a method)
RETRAIN = "retrain"  # exact unlearning: a fresh model trained on the retained examples

# Seed streams: every population draws its model seeds from np.random.default_rng([seed, stream]).
STREAMS = {"ulira": 11, "eps-unlearn": 21, "eps-retrain": 22, "targets": 31}


def model_seeds(seed: int, n: int, stream: str) -> list[int]:
    """``n`` distinct, reproducible model seeds for one population (``stream`` in STREAMS)."""
    if stream not in STREAMS:
        raise SalunError(f"unknown seed stream {stream!r}; allowed: {', '.join(STREAMS)}")
    rng = np.random.default_rng([int(seed), STREAMS[stream]])
    seeds = rng.choice(2**31 - 1, size=n, replace=False) + 1
    return [int(s) for s in seeds]


class PoolDataset(Dataset):
    """Examples named by pool keys; items ``(image, label, key)``; ``labels`` as a tensor."""

    def __init__(self, bundle, keys: Sequence[int] | np.ndarray) -> None:
        self.train, self.test = bundle.train, bundle.test
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        n, total = len(self.train), len(self.train) + len(self.test)
        if k.size and (int(k.min()) < 0 or int(k.max()) >= total):
            bad = int(k.min()) if int(k.min()) < 0 else int(k.max())
            raise SalunError(f"pool key {bad} out of range 0..{total - 1}")
        self.keys = torch.from_numpy(k)
        is_train = self.keys < n
        labels = torch.empty(len(k), dtype=torch.long)
        labels[is_train] = self.train.labels[self.keys[is_train]]
        labels[~is_train] = self.test.labels[self.keys[~is_train] - n]
        self.labels = labels
        self._n = n

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, i: int):
        key = int(self.keys[i])
        image = self.train.images[key] if key < self._n else self.test.images[key - self._n]
        return image, int(self.labels[i]), key


def pool_dataset(exp, keys: Sequence[int] | np.ndarray) -> IndexedDataset | PoolDataset:
    """Dataset of pool keys (an :class:`IndexedDataset` when all are training images)."""
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    if k.size == 0 or int(k.max()) < len(exp.bundle.train):
        return IndexedDataset(exp.bundle.train, k)
    return PoolDataset(exp.bundle, k)


def pool_keys_of_test(exp, test_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Pool keys of test images ``test_indices``."""
    return np.asarray(test_indices, dtype=np.int64) + len(exp.bundle.train)


def quiet_task(exp):
    """The experiment's task with per-epoch progress bars off (populations show one bar)."""
    return dataclasses.replace(exp.task, progress=False)


def _seed_all(seed: int) -> None:
    from salun.experiment import seed_everything

    seed_everything(int(seed))


def train_on(
    exp,
    indices: Sequence[int] | np.ndarray,
    seed: int,
    recipe: TrainConfig | None = None,
    desc: str = "train",
) -> nn.Module:
    """A fresh model ``exp.new_model(seed)`` trained on pool ``indices`` (seeded).

    Uses ``recipe`` (default ``exp.cfg.train``) through :func:`salun.run.recipe_optim` and the
    shared loop :func:`salun.methods._fit.fit`; batches are shuffled with ``seed``. The weights
    are cached in ``cfg.cache_dir`` by (data, indices, model, recipe, seed), so the U-LiRA
    shadows and retrained references of one split are trained once for every method.
    """
    from salun.experiment import cached_train, recipe_optim

    recipe = exp.cfg.train if recipe is None else recipe
    path = _population_model_path(exp, indices, seed, recipe)
    data = pool_dataset(exp, indices)
    if len(data) == 0:
        raise SalunError("cannot train a population model on an empty set of examples")

    def train(model: nn.Module) -> dict[str, Any]:
        task = quiet_task(exp)
        _seed_all(seed)
        loader = task.loader(data, recipe.batch_size, True, seed)
        fit(model, lambda e: [(loader, task.loss)], recipe_optim(recipe), None, False, desc)
        return {"seed": int(seed)}

    model, info = cached_train(desc, path, exp.new_model(seed), train)
    return model.eval() if info["cache_hit"] else model


def _population_model_path(exp, indices, seed: int, recipe: TrainConfig) -> Path | None:
    c = exp.cfg
    if not c.cache_dir:
        return None
    from salun.experiment import cache_key

    key = cache_key(
        "population-model",
        dataset=c.data.name,
        image_size=c.data.image_size,
        pool=hash_obj(exp.split.train.tolist() + exp.split.test.tolist()),
        indices=hash_obj(np.asarray(indices).tolist()),
        model=dataclasses.asdict(c.model),
        recipe=dataclasses.asdict(recipe),
        seed=int(seed),
    )
    return Path(c.cache_dir) / "population" / f"model-{key}.safetensors"


def saliency_mask_for(exp, model: nn.Module, forget_indices) -> SaliencyMask:
    """SalUn mask of ``model`` for the pool examples ``forget_indices`` (exp.cfg.mask settings)."""
    m = exp.cfg.mask
    keys = np.asarray(forget_indices, dtype=np.int64)
    return compute_saliency_mask(
        model,
        pool_dataset(exp, keys),
        quiet_task(exp),
        m.ratio,
        m.per_layer,
        m.batch_size,
        hash_obj(keys.tolist()),
    )


def unlearn_copy(
    exp,
    model: nn.Module | None,
    method_name: str,
    params: dict[str, Any] | None,
    forget_indices: Sequence[int] | np.ndarray,
    retain_indices: Sequence[int] | np.ndarray,
    seed: int,
    use_mask: bool | SaliencyMask = False,
) -> nn.Module:
    """Unlearn pool ``forget_indices`` from a deep copy of ``model`` with a registered method.

    ``method_name`` may also be ``"none"`` (return the copy unchanged: the do-nothing baseline)
    or ``"retrain"`` (a fresh model trained on ``retain_indices`` with ``exp.cfg.retrain_recipe``,
    as :func:`salun.run.unlearn_once` does; ``model`` and ``params`` are then unused).
    ``use_mask``: ``True`` computes the SalUn saliency mask on the copy; a
    :class:`SaliencyMask` is used as given (compute it once when every copy starts from the same
    model). Everything is seeded by ``seed``.
    """
    if method_name == RETRAIN:
        if params:
            log.info("retrain uses the retrain recipe; ignoring params %s", params)
        return train_on(exp, retain_indices, seed, exp.cfg.retrain_recipe, "retrain")
    if model is None:
        raise SalunError(f"method {method_name!r} needs a model to unlearn from")
    out = copy.deepcopy(model)
    if method_name == NOOP:
        return out.eval()
    method = get_method(method_name, **(params or {}))
    mask: SaliencyMask | None = None
    if isinstance(use_mask, SaliencyMask):
        mask = use_mask
    elif use_mask:
        mask = saliency_mask_for(exp, out, forget_indices)
    data = UnlearnData(
        forget=pool_dataset(exp, forget_indices),
        retain=pool_dataset(exp, retain_indices),
        seed=int(seed),
    )
    _seed_all(seed)
    return method.unlearn(out, data, quiet_task(exp), mask=mask)


@torch.no_grad()
def logit_confidences(model: nn.Module, dataset, task, batch_size: int = 512) -> np.ndarray:
    """LiRA's logit-scaled confidence phi = log(p_y / (1 - p_y)) per example, float64."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    for batch in task.loader(dataset, batch_size, shuffle=False):
        x, y, _ = task.batch(batch)
        z = model(x).double()
        true = z.gather(1, y[:, None]).squeeze(1)
        others = z.scatter(1, y[:, None], float("-inf"))
        out.append((true - torch.logsumexp(others, dim=1)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def progress_bar(exp, total: int, desc: str):
    """One tqdm bar over a population (off when ``exp.task.progress`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not exp.task.progress, leave=False)
