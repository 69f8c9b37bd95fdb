"""Evaluation of a class-conditional generator after class erasure.

As in SalUn (Fan et al., ICLR 2024, §5): a classifier trained on the same data (the *judge*, its
test accuracy recorded) labels generated samples.
- UA (unlearning accuracy) = share of samples requested for the forgotten class that the judge
  does NOT assign to that class (higher = more forgotten).
- Per-class accuracy = share of samples requested for class k that the judge assigns to k, for
  every other class; ``other_acc`` is their mean (utility that must be kept).
- FID of the other classes' samples against real images of those classes (held-out test images),
  with the named feature extractor (see :mod:`salun.eval.fid`).
"""

from __future__ import annotations

import io
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from salun.core.errors import SalunError, require_extra, unknown_choice
from salun.core.io import write_bytes
from salun.core.limits import MAX_SEED
from salun.eval.fid import frechet_distance

#: Samplers of :func:`sample`.
SAMPLERS = ("ddim", "ddpm")

#: Most denoising passes (samples x steps) one ``salun sample`` may request without
#: ``--allow-large``: 1,000,000 is e.g. 20,000 samples of 50 steps, minutes on a GPU but
#: tens of minutes on one CPU core for the 16 x 16 digits UNet (some 700 passes a second).
MAX_SAMPLE_PASSES = 1_000_000

GEN_EVAL_VERSION = "salun-gen-eval-1"

DEFINITIONS = {
    "UA": "% of samples generated for the forgotten class that the judge classifier does not "
    "assign to it",
    "other_acc": "mean over the other classes of the % of samples generated for class k that the "
    "judge assigns to k",
    "per_class_acc": "% of samples generated for class k that the judge assigns to k",
    "FID": "Frechet distance between features of the other classes' samples and of real held-out "
    "images of those classes (extractor named in fid_features)",
}


@torch.no_grad()
def judge_predictions(judge: nn.Module, images: torch.Tensor, batch_size: int = 512):
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    preds = [judge(c.to(device)).argmax(1).cpu() for c in images.split(batch_size)]
    judge.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def generation_metrics(
    images: torch.Tensor,
    labels: torch.Tensor,
    judge: nn.Module,
    forget_class: int,
    num_classes: int,
    real_images: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    features=None,
) -> dict[str, Any]:
    """UA, per-class accuracy and FID of generated ``images`` requested for ``labels``."""
    pred = judge_predictions(judge, images)
    per_class: dict[str, float] = {}
    for k in range(num_classes):
        sel = labels == k
        if bool(sel.any()):
            per_class[str(k)] = 100.0 * float((pred[sel] == k).float().mean())
    forget_sel = labels == forget_class
    ua = 100.0 * float((pred[forget_sel] != forget_class).float().mean())
    others = [v for k, v in per_class.items() if int(k) != forget_class]
    out: dict[str, Any] = {
        "UA": ua,
        "other_acc": float(np.mean(others)) if others else float("nan"),
        "per_class_acc": per_class,
        "samples": int(len(labels)),
    }
    if features is not None and real_images is not None and real_labels is not None:
        gen = images[labels != forget_class]
        real = real_images[real_labels != forget_class]
        out["FID"] = frechet_distance(features(gen), features(real))
        out["fid_features"] = features.name
        out["fid_sizes"] = {"generated": int(len(gen)), "real": int(len(real))}
    return out


def sample_and_score(
    model: nn.Module,
    scheduler,
    judge: nn.Module,
    forget_class: int,
    num_classes: int,
    samples_per_class: int,
    guidance: float,
    steps: int,
    sampler: str,
    seed: int,
    real_images: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    features=None,
    progress: bool = False,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Sample ``samples_per_class`` images for every class and score them; returns the images."""
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    images = sample(
        model, labels, scheduler, num_classes, guidance, steps, sampler, seed, progress=progress
    )
    metrics = generation_metrics(
        images, labels, judge, forget_class, num_classes, real_images, real_labels, features
    )
    metrics["sampling"] = {
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "samples_per_class": samples_per_class,
    }
    return metrics, images, labels


def save_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    per_row: int = 10,
    scale: int = 4,
    title: str | None = None,
    class_names: list[str] | None = None,
    gap: int = 2,
    row_format: str = "class {}",
) -> None:
    """PNG grid, one row per class (the first ``per_row`` samples of each), written atomically.

    Samples are upscaled ``scale`` times (nearest neighbour: pixels stay pixels) and ``gap``
    pixels apart; each row is labelled with its class (``class_names`` or the index), and the
    grid carries ``title`` (e.g. the model: "Original", "SalUn") above it."""
    from PIL import Image, ImageDraw

    classes = sorted(set(labels.tolist()))
    arr = (images.clamp(0, 1) * 255).round().byte()
    c, h, w = arr.shape[1:]
    th, tw = h * scale, w * scale
    names = [class_names[k] if class_names and k < len(class_names) else str(k) for k in classes]
    rows = [row_format.format(n) for n in names]
    label_w = 8 + 7 * max(len(r) for r in rows)
    title_h = 18 if title else 4
    width = label_w + per_row * (tw + gap) + gap
    height = title_h + len(classes) * (th + gap) + gap
    mode = "L" if c == 1 else "RGB"
    canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if mode == "L" else (0, 0, 0)
    if title:
        draw.text((gap + 2, 3), title, fill=ink)
    for i, k in enumerate(classes):
        y = title_h + gap + i * (th + gap)
        draw.text((4, y + th // 2 - 5), rows[i], fill=ink)
        for j, tile in enumerate(arr[labels == k][:per_row]):
            t = tile[0] if c == 1 else tile.permute(1, 2, 0)
            img = Image.fromarray(t.numpy()).resize((tw, th), Image.Resampling.NEAREST)
            canvas.paste(img, (label_w + gap + j * (tw + gap), y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def check_sampling(scheduler, steps: int, seed: int, steps_name: str = "sampling steps") -> None:
    """One line unless ``steps`` is in 1..the scheduler's training timesteps and ``seed`` in
    0..MAX_SEED (a larger seed overflows the torch generator)."""
    timesteps = int(scheduler.config.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, Integral) or not 1 <= steps <= timesteps:
        raise SalunError(
            f"{steps_name} must be in 1..{timesteps} (the model's training timesteps), "
            f"got {steps!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise SalunError(f"sampling seed must be in 0..{MAX_SEED}, got {seed!r}")


@torch.no_grad()
def sample(
    model: nn.Module,
    labels: torch.Tensor,
    scheduler,
    null_label: int,
    guidance: float = 2.0,
    steps: int = 50,
    sampler: str = "ddim",
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Generate one image per label with classifier-free guidance; returns ``[0, 1]`` images.

    eps_hat = (1 + w) * eps(x_t, c) - w * eps(x_t, null)  (Ho & Salimans, 2021), with the DDIM
    (eta = 0, Song et al., ICLR 2021) or DDPM ancestral sampler on ``steps`` steps. Deterministic
    for a seed: the initial noise and the DDPM step noise come from one seeded generator, and each
    chunk of ``batch_size`` labels gets its own stream so results do not depend on chunking order.
    """
    require_extra("diffusers", "generation")
    from diffusers import DDIMScheduler, DDPMScheduler
    from tqdm.auto import tqdm

    if sampler not in SAMPLERS:
        raise unknown_choice("sampler", sampler, SAMPLERS)
    check_sampling(scheduler, steps, seed)
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    sched = cls.from_config(scheduler.config)
    sched.set_timesteps(steps)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cfg: Any = model.config
    shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    out = []
    chunks = list(torch.as_tensor(labels).long().split(batch_size))
    for i, chunk in enumerate(tqdm(chunks, desc="sample", disable=not progress, leave=False)):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        x = torch.randn((len(chunk), *shape), generator=g).to(device)
        c = chunk.to(device)
        both = torch.cat([c, torch.full_like(c, null_label)])
        for t in sched.timesteps:
            eps_c, eps_u = model(torch.cat([x, x]), t, class_labels=both).sample.chunk(2)
            eps = (1 + guidance) * eps_c - guidance * eps_u
            kwargs = {"generator": g} if sampler == "ddpm" else {}
            x = sched.step(eps, t, x, **kwargs).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, *shape))
