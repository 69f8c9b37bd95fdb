"""The Task protocol: everything the pipeline and the methods may ask of a model family.

A task is a class registered in :data:`salun.core.registry.TASKS` (``@TASKS.register("name")``);
``salun.run.prepare`` builds one instance per configuration with :meth:`Task.from_config`. The
pipeline (:mod:`salun.run`), the CLI and the cached trainer (:mod:`salun.experiment`) only call
the members below, so adding a task never touches them (see ``docs/adding-a-task.md``).

Four groups of members:

- **objective** (what methods call): ``loss``, ``forget_loss``, ``relabel``;
- **data**: ``loader``, ``labels_of``, ``batch`` (the batch adapter) and ``logits`` (the output
  adapter; classifier tasks: the classification evaluators call it, generators need not);
- **model**: ``build_model``, ``load_model``, ``save_model``, ``cache_fields`` (the model's
  part of the cache key), ``fit_summary`` (what a trained model records);
- **evaluation**: ``evaluate`` (the task's metrics), ``compare`` (the reference comparison of
  ``salun unlearn``: Retrain and the noise floor for classifiers, the original for generators),
  ``headline`` (the metric names the CLI prints).

A task whose whole run differs from the one the pipeline assembles (text-to-image fine-tunes
an existing pipeline) overrides ``run_unlearn`` / ``run_mask`` / ``run_train`` / ``run_demo``;
the default ones (:class:`salun.tasks.defaults.StandardPipeline`) raise or return None.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:  # types only: the task layer never imports the pipeline at run time
    from salun.config import Config
    from salun.data import DatasetBundle
    from salun.experiment import Experiment


@runtime_checkable
class Task(Protocol):
    """What a registered task provides (see the module docstring for the groups)."""

    name: str
    num_classes: int
    device: torch.device
    progress: bool
    #: The preset ``salun ... --task NAME`` starts from when no preset is given (or None).
    default_preset: ClassVar[str | None]
    #: the task's own section of the configuration (None: it has none), hidden for other tasks
    config_section: ClassVar[str | None]
    #: Metric keys ``salun eval --json`` prints, in order.
    headline: ClassVar[tuple[str, ...]]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle) -> Task: ...

    @staticmethod
    def check_config(cfg: Config) -> None:
        """Task-specific checks of a configuration (one-line SalunError), before any compute."""

    # -- objective ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any, labels: torch.Tensor | None = None) -> Any: ...

    def forget_loss(self, model: nn.Module, batch: Any) -> Any: ...

    def relabel(
        self, labels: torch.Tensor, generator: torch.Generator, exclude_true: bool = False
    ) -> torch.Tensor: ...

    # -- data -----------------------------------------------------------------------------------
    def batch(self, batch: Any) -> Any: ...

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The output adapter: the model's scores on inputs ``x`` (classifiers: logits; the
        evaluators and the methods never call ``model(x)`` themselves)."""
        ...

    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0
    ) -> DataLoader: ...

    def labels_of(self, dataset: Dataset) -> torch.Tensor: ...

    # -- model ----------------------------------------------------------------------------------
    def build_model(self, exp: Experiment) -> nn.Module: ...

    def load_model(self, exp: Experiment, path: str | Path) -> nn.Module: ...

    def save_model(self, exp: Experiment, model: nn.Module, folder: Path) -> Path: ...

    def cache_fields(self, cfg: Config) -> dict[str, Any]: ...

    def fit_summary(self, exp: Experiment, model: nn.Module, data: Dataset) -> dict[str, Any]: ...

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self, exp: Experiment, model: nn.Module, out: Path | None = None, tag: str = "samples"
    ) -> dict[str, Any]: ...

    def compare(
        self,
        exp: Experiment,
        model: nn.Module,
        original: nn.Module,
        metrics: dict[str, Any],
        out: Path,
    ) -> dict[str, Any]: ...
