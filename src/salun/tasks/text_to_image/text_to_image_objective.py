"""Text-to-image task: Stable Diffusion's UNet behind the method seam.

The trainable model is the ``UNet2DConditionModel`` of a Stable Diffusion pipeline; the text
encoder and the VAE are frozen and never run during unlearning: the forget and retain sets are
cached once as VAE latents (:class:`LatentSet`) and every prompt as a row of a text-embedding table
held by the task (the last row is the empty prompt, the "null label" of classifier-free guidance).
A batch is ``(latents, prompt index, position)``, so FT, GA, RL, SalUn, l1-sparse and NegGrad+ run
unchanged:

- ``loss(model, batch)``: the latent noise-prediction MSE (Rombach et al., CVPR 2022),
  E || eps_theta(z_t, t, c) - eps ||^2 (v-prediction models: against the velocity), with the
  prompt dropped to "" with probability ``p_uncond``.
- ``loss(model, batch, labels=c')``: SalUn's forgetting objective for generation (Fan et al.,
  ICLR 2024, eq. 10): || eps_theta(z_t, t, c_f) - sg[eps(z_t, t, c')] ||^2 with c' a retain prompt
  (``relabel="retain"``), the empty prompt (``"null"``), the next class's prompt (``"next"``, the
  authors' class-wise code) or a random other class (``"random"``). The target comes from the
  current model (the authors' code) or a frozen copy (``target="frozen"``).
- ``forget_loss``: the plain noise MSE on the forget prompts (the saliency loss).

Options for real Stable Diffusion: ``precision`` bf16/fp16 autocast (weights and the loss stay
fp32), ``gradient_checkpointing`` (diffusers' own), and 8-bit Adam through the optimizer name
``adam8bit`` (bitsandbytes). The task supplies SalUn's retain weight (``retain_weight``: 0.5 for
class-wise, 0.1 for concept forgetting, the paper's settings).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from salun.core.errors import SalunError, unknown_choice
from salun.tasks.batches import dataset_labels, position_loader
from salun.tasks.diffusion import fixed_draw_loss, relabelled_mse

log = logging.getLogger(__name__)

RELABEL = ("retain", "null", "next", "random")
TARGETS = ("current", "frozen")
PRECISIONS = ("fp32", "bf16", "fp16")


class LatentSet(Dataset):
    """Cached VAE latents with the prompt index of each: items ``(latent, prompt index)``."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        if len(latents) != len(labels):
            raise SalunError(f"{len(latents)} latents but {len(labels)} prompt indices")
        self.latents = latents.float().contiguous()
        self.labels = torch.as_tensor(labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.latents[i], self.labels[i]


@dataclass
class TextToImageTask:
    """Noise prediction for a text-conditioned UNet over a cached prompt-embedding table.

    Args:
        embeddings: ``(P + 1, L, D)`` text-encoder hidden states; row ``P`` is the empty prompt.
        prompts: the ``P`` prompts of the table (row order).
        scheduler: the training noise schedule (a diffusers scheduler with ``add_noise``).
        num_classes: how many leading prompts are classes for ``relabel="next"|"random"``
            (default: all ``P``).
        retain_ids: prompt rows used as c' by ``relabel="retain"``.
        token_ids: ``(P + 1, L)`` token ids of the table (attention-based methods use them).
    """

    embeddings: torch.Tensor
    prompts: list[str]
    scheduler: Any
    num_classes: int = 0
    retain_ids: tuple[int, ...] = ()
    token_ids: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    p_uncond: float = 0.0
    relabel_mode: str = "retain"
    target: str = "current"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    retain_weight: float = 0.1  # SalUn's alpha: 0.1 concept, 0.5 class-wise (Fan et al.)
    name: str = "text_to_image"

    def __post_init__(self) -> None:
        if self.relabel_mode not in RELABEL:
            raise unknown_choice("text_to_image relabel", self.relabel_mode, RELABEL)
        if self.target not in TARGETS:
            raise unknown_choice("text_to_image target", self.target, TARGETS)
        if self.precision not in PRECISIONS:
            raise unknown_choice("text_to_image precision", self.precision, PRECISIONS)
        if not 0 <= self.p_uncond < 1:
            raise SalunError(f"p_uncond must be in [0, 1), got {self.p_uncond!r}")
        if self.embeddings.dim() != 3 or len(self.embeddings) != len(self.prompts) + 1:
            raise SalunError(
                f"the embedding table must be (prompts + 1, tokens, dim), got "
                f"{tuple(self.embeddings.shape)} for {len(self.prompts)} prompts"
            )
        if self.num_classes <= 0:
            self.num_classes = len(self.prompts)
        if self.relabel_mode == "retain" and not self.retain_ids:
            raise SalunError("relabel=retain needs at least one retain prompt")
        if self.relabel_mode in ("next", "random") and self.num_classes < 2:
            raise SalunError(f"relabel={self.relabel_mode} needs >= 2 class prompts")
        self.embeddings = self.embeddings.detach().float().cpu()
        self._table: torch.Tensor | None = None
        self._frozen: tuple[nn.Module, nn.Module] | None = None
        self.reseed(self.seed)

    @property
    def null_label(self) -> int:
        return len(self.prompts)

    @property
    def timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def reseed(self, seed: int) -> None:
        """Restart the generator that draws time steps, noise and prompt dropout."""
        self.generator = torch.Generator().manual_seed(int(seed) + 1_000_003)

    def prompt_id(self, prompt: str) -> int:
        if prompt == "":
            return self.null_label
        if prompt not in self.prompts:
            raise unknown_choice("prompt", prompt, self.prompts)
        return self.prompts.index(prompt)

    # -- model calls ----------------------------------------------------------------------
    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        if self._table is None or self._table.device != self.device:
            self._table = self.embeddings.to(self.device)
        return self._table[torch.as_tensor(labels).to(self.device)]

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
        """The UNet's output for prompt rows ``labels`` (autocast when ``precision`` asks)."""
        if self.gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", True):
            model.enable_gradient_checkpointing()  # type: ignore[operator]
        emb = self.embed(labels)
        if self.precision == "fp32":
            return model(x_t, t, encoder_hidden_states=emb).sample
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(device_type=x_t.device.type, dtype=dtype):
            out = model(x_t, t, encoder_hidden_states=emb).sample
        return out.float()

    def noised(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, regression target, prompt rows): t uniform, eps standard normal."""
        z0 = batch[0].to(self.device, non_blocking=True).float()
        y = torch.as_tensor(batch[1]).long().to(self.device)
        n = z0.shape[0]
        t = torch.randint(0, self.timesteps, (n,), generator=self.generator).to(self.device)
        eps = torch.randn(z0.shape, generator=self.generator).to(self.device)
        z_t = self.scheduler.add_noise(z0, eps, t)
        if self.scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            eps = self.scheduler.get_velocity(z0, eps, t)
        return z_t, t, eps, y

    # -- objectives -------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise MSE (prompt dropout ``p_uncond``); with ``labels``, SalUn's relabelled loss."""
        z_t, t, eps, y = self.noised(batch)
        if labels is None:
            if self.p_uncond > 0:
                drop = torch.rand(y.shape, generator=self.generator).to(y.device) < self.p_uncond
                y = torch.where(drop, torch.full_like(y, self.null_label), y)
            return F.mse_loss(self.predict(model, z_t, t, y), eps)
        return relabelled_mse(self, model, z_t, t, y, labels)

    def forget_loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Saliency loss: the noise MSE on the forget latents with their own prompts."""
        z_t, t, eps, y = self.noised(batch)
        return F.mse_loss(self.predict(model, z_t, t, y), eps)

    def relabel(
        self, labels: torch.Tensor, generator: torch.Generator, exclude_true: bool = True
    ) -> torch.Tensor:
        """c' for each forget prompt row (never the row itself)."""
        labels = labels.cpu().long()
        if self.relabel_mode == "null":
            return torch.full_like(labels, self.null_label)
        if self.relabel_mode == "retain":
            pool = torch.tensor(self.retain_ids, dtype=torch.long)
            return pool[torch.randint(0, len(pool), labels.shape, generator=generator)]
        k = self.num_classes
        if self.relabel_mode == "next":
            return (labels + 1) % k
        return (labels + torch.randint(1, k, labels.shape, generator=generator)) % k

    # -- data -------------------------------------------------------------------------------
    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last=False
    ) -> DataLoader:
        return position_loader(dataset, batch_size, shuffle, seed, drop_last)

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        return dataset_labels(dataset)

    def mean_loss(self, model: nn.Module, dataset: Dataset, batch_size: int = 64) -> float:
        """Noise MSE over a dataset with its own prompts (one fixed draw of t and eps)."""
        return fixed_draw_loss(self, model, dataset, batch_size)


def cross_attention_names(model: nn.Module) -> list[str]:
    """Parameter names of the cross-attention layers (``attn2`` in diffusers' UNets)."""
    return [n for n, _ in model.named_parameters() if ".attn2." in n]
