"""Class-conditional DDPM task: the noise-prediction objective behind the method seam.

Methods call ``task.loss``, ``task.forget_loss`` and ``task.relabel`` exactly as for a classifier,
so FT, GA, RL, SalUn and Retrain run unchanged on a diffusion model:

- ``loss(model, batch)``: E_{t, eps} || eps_theta(x_t, t, c) - eps ||^2 with the label replaced by
  the null label with probability ``p_uncond`` (classifier-free guidance training, Ho & Salimans
  2021). This is the DDPM objective (Ho et al., NeurIPS 2020) used for training, Retrain and the
  retain term of every method.
- ``loss(model, batch, labels=c')``: the forgetting objective of SalUn for diffusion (Fan et al.,
  ICLR 2024, eq. 10): E || eps_theta(x_t, t, c) - sg[eps(x_t, t, c')] || ^2 on the batch's images,
  so the forgotten class c is steered to what the model generates for another class c'. The
  target comes from the current model (the authors' code) or a frozen copy of the model as it was
  when unlearning started (``target="frozen"``).
- ``forget_loss(model, batch)``: the plain noise MSE on the forget data, the saliency loss.
- ``relabel``: c' = (c + 1) mod K (``relabel="next"``, the authors' code) or a uniformly random
  other class (``relabel="random"``, the paper's wording). Never the true class.

Images come in ``[0, 1]`` (the datasets' convention) and are mapped to ``[-1, 1]``. Time steps and
noise are drawn from the task's own generator, so a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from salun.core.errors import SalunError, require_extra, unknown_choice
from salun.tasks.batches import dataset_labels, position_loader
from salun.tasks.diffusion import fixed_draw_loss, relabelled_mse

RELABEL = ("next", "random")
TARGETS = ("current", "frozen")
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def make_scheduler(timesteps: int = 1000, beta_schedule: str = "linear"):
    """The training noise schedule as a diffusers ``DDPMScheduler`` (linear 1e-4..0.02 or cosine)."""
    require_extra("diffusers", "generation")
    from diffusers import DDPMScheduler

    if beta_schedule not in BETA_SCHEDULES:
        raise unknown_choice("beta schedule", beta_schedule, BETA_SCHEDULES)
    if timesteps < 2:
        raise SalunError(f"diffusion timesteps must be >= 2, got {timesteps}")
    return DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        clip_sample=True,
    )


@dataclass
class DiffusionTask:
    """Noise prediction for a class-conditional UNet with a null label at index ``num_classes``."""

    num_classes: int
    scheduler: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    p_uncond: float = 0.1
    relabel_mode: str = "next"
    target: str = "current"
    seed: int = 0
    name: str = "ddpm"
    retain_weight: float = 1e-3  # default alpha of SalUn's paper form (Fan et al., DDPM setting)

    def __post_init__(self) -> None:
        if self.scheduler is None:
            self.scheduler = make_scheduler()
        if self.relabel_mode not in RELABEL:
            raise unknown_choice("diffusion relabel", self.relabel_mode, RELABEL)
        if self.target not in TARGETS:
            raise unknown_choice("diffusion target", self.target, TARGETS)
        if not 0 <= self.p_uncond < 1:
            raise SalunError(f"p_uncond must be in [0, 1), got {self.p_uncond!r}")
        if self.num_classes < 2:
            raise SalunError(f"a class-conditional DDPM needs >= 2 classes, got {self.num_classes}")
        self.reseed(self.seed)
        self._frozen: tuple[nn.Module, nn.Module] | None = None

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def reseed(self, seed: int) -> None:
        """Restart the generator that draws time steps, noise and label dropout."""
        self.generator = torch.Generator().manual_seed(int(seed) + 1_000_003)

    # -- data -------------------------------------------------------------------------------
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device, non_blocking=True) * 2 - 1).clamp(-1, 1)

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, pos = batch[0], batch[1], batch[2]
        return self.inputs(x), y.to(self.device), torch.as_tensor(pos)

    def noised(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, eps, labels) for a batch: t uniform over the schedule, eps standard normal."""
        x0, y, _ = self.batch(batch)
        n = x0.shape[0]
        t = torch.randint(0, self.timesteps, (n,), generator=self.generator)
        eps = torch.randn(x0.shape, generator=self.generator).to(self.device)
        t = t.to(self.device)
        return self.scheduler.add_noise(x0, eps, t), t, eps, y

    @staticmethod
    def predict(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor):
        return model(x_t, t, class_labels=labels).sample

    # -- objectives ---------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        """DDPM loss with CFG label dropout; with ``labels``, the relabelling loss (see module)."""
        x_t, t, eps, y = self.noised(batch)
        if labels is None:
            drop = torch.rand(y.shape, generator=self.generator).to(y.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
            return F.mse_loss(self.predict(model, x_t, t, y), eps)
        return relabelled_mse(self, model, x_t, t, y, labels)

    def forget_loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Saliency loss: the noise MSE on forget images with their own labels (no dropout)."""
        x_t, t, eps, y = self.noised(batch)
        return F.mse_loss(self.predict(model, x_t, t, y), eps)

    def relabel(
        self, labels: torch.Tensor, generator: torch.Generator, exclude_true: bool = True
    ) -> torch.Tensor:
        """c' for each label: the next class, or a random other class (never c itself)."""
        labels = labels.cpu()
        if self.relabel_mode == "next":
            return (labels + 1) % self.num_classes
        shift = torch.randint(1, self.num_classes, labels.shape, generator=generator)
        return (labels + shift) % self.num_classes

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        return position_loader(dataset, batch_size, shuffle, seed, drop_last)

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        return dataset_labels(dataset)

    def mean_loss(self, model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
        """Noise MSE over a dataset with the true labels (one fixed draw of t and eps)."""
        return fixed_draw_loss(self, model, dataset, batch_size)
