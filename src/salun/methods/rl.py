"""RL: random labelling.

Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR 2020 (random-label baseline);
as run in SalUn (Fan et al., ICLR 2024). Objective per epoch: a pass over D_f with random
labels y', then a pass over D_r with the true labels:
min_theta E_{D_f} CE(theta; x, y') + E_{D_r} CE(theta; x, y).

Random labels (``labels``, shared with ``salun`` and ``salun_soft``):

- ``"all"`` (default): y' drawn afresh for every batch uniformly from all classes, y' may equal
  y (the authors' code on CIFAR-10/SVHN).
- ``"other"``: y' drawn afresh for every batch from the *other* classes, y' != y (SalUn's eq. 8
  as written).
- ``"fixed"``: one table of labels from all classes drawn once and kept for every epoch (this
  package's former default; neither the paper nor the reference code). About 1/K of D_f is
  then trained to its own true label on every epoch.

Draws come from a generator seeded from the run seed that advances per batch, so the same seed
gives the same labels and weights. Why "all" is the default, measured (docs/results.md, "Random
labels"; Fashion-MNIST 4000/2000 subset, small CNN, SalUn 5 epochs, calibration off, seed 0,
Avg. Gap to Retrain for all / other / fixed): class 3: 0.72 / 1.22 / 0.82; class 6:
0.40 / 0.66 / 0.42 (UA 100 in all six); random 10 %: 6.26 / 6.16 / 6.14 (within noise).
"other" never teaches an image its own label and forgets harder, which costs retain and test
accuracy at the same lr. "fixed" stays as a named option to reproduce results made with it
(evaluator salun-eval-2 era); it has the failure mode reported in issue 10 (on other seeds,
class-wise UA 92.8 and 39.5 with the same settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import GENERIC_TASKS, UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit

LABELS = ("all", "other", "fixed")


def check_labels(value: str, where: str) -> None:
    if value not in LABELS:
        raise SalunError(f"unknown {where}.labels {value!r}; allowed: {', '.join(LABELS)}")


def random_label_table(task, dataset, seed: int, exclude_true: bool) -> torch.Tensor:
    """One random label per forget sample, drawn once (fixed over epochs; ``labels="fixed"``)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return task.relabel(task.labels_of(dataset), g, exclude_true)


def relabelled_loss(task, table: torch.Tensor):
    """CE against the per-sample random labels in ``table`` (indexed by batch position)."""

    def loss(model, batch):
        pos = batch[2]
        if pos is None:  # a user's DataLoader, iterated as it is
            raise SalunError(
                "labels='fixed' keys random labels on sample positions, which a DataLoader "
                "passed as it is does not give; pass its Dataset or use labels='all'"
            )
        return task.loss(model, batch, labels=table[torch.as_tensor(pos)])

    return loss


def fresh_label_loss(task, seed: int, exclude_true: bool):
    """CE against random labels drawn afresh for every batch from one seeded generator.

    ``exclude_true``: y' from the other classes (y' != y), else from all classes. The generator
    advances with every batch, so labels differ between batches and epochs and the same seed
    reproduces them.
    """
    from salun.core.checkpoint import method_generator

    g = method_generator(seed + 7919)  # checkpointed with the loop, so a resume draws the same

    def loss(model, batch):
        labels = task.relabel(torch.as_tensor(batch[1]), g, exclude_true)
        return task.loss(model, batch, labels=labels)

    loss.generator = g  # type: ignore[attr-defined]  # exposed for tests
    return loss


def forget_label_loss(task, dataset, seed: int, labels: str):
    """The D_f loss for a ``labels`` choice (see the module docstring)."""
    check_labels(labels, "method")
    if labels == "fixed":
        return relabelled_loss(task, random_label_table(task, dataset, seed, exclude_true=False))
    return fresh_label_loss(task, seed, exclude_true=labels == "other")


@METHODS.register("rl")
@dataclass
class RL(Optim):
    tasks: ClassVar[tuple[str, ...]] = GENERIC_TASKS
    epochs: int = 10
    lr: float = 0.01
    labels: str = "all"  # all (per batch, reference) | other (y' != y, per batch) | fixed (table)

    def check(self) -> None:
        super().check()
        check_labels(self.labels, "rl")

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data)
        forget_loss = forget_label_loss(task, data.forget, data.seed, self.labels)
        forget = task.loader(data.forget, self.batch_size, True, data.seed)
        retain = task.loader(data.retain, self.batch_size, True, data.seed + 1)
        phases = [(forget, forget_loss), (retain, task.loss)]
        return fit(model, lambda e: phases, self, mask, task.progress, "RL")
