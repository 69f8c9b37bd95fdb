"""Shared input handling for the image evaluators: PIL images or float tensors in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salun.core.custom_code import refuse_custom_code
from salun.core.errors import SalunError


def to_uint8_rgb(images: Any) -> list[np.ndarray]:
    """``H x W x 3`` uint8 RGB arrays from PIL images or an ``N x C x H x W`` tensor in [0, 1].

    Tensors are quantised as PNG writers do (``round(255 x)``); 1-channel tensors are repeated
    to 3 channels. Values outside [0, 1] raise a one-line :class:`SalunError`.
    """
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise SalunError(
                f"image tensor must be N x C x H x W with C in (1, 3), got {tuple(images.shape)}"
            )
        if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6 or not torch.isfinite(x).all()):
            raise SalunError(
                f"image tensor values must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]"
            )
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return [np.ascontiguousarray(a) for a in u8.numpy()]
    if not isinstance(images, Sequence) or isinstance(images, str | bytes):
        raise SalunError(
            f"images must be a list of PIL images or a float tensor, got {type(images).__name__}"
        )
    out = []
    for i, im in enumerate(images):
        if not hasattr(im, "convert"):
            raise SalunError(f"image {i} is a {type(im).__name__}, not a PIL image")
        out.append(np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8)))
    return out


def to_pil(images: Any) -> list:
    """PIL RGB images from PIL images or a float tensor in [0, 1]."""
    from PIL import Image

    return [Image.fromarray(a, mode="RGB") for a in to_uint8_rgb(images)]


def check_safetensors_folder(folder: Path, what: str) -> None:
    """Refuse a local model folder without safetensors weights (pickled weights never load) or
    whose configs ask for code from the folder (``auto_map``)."""
    if not folder.is_dir():
        raise SalunError(f"{what} folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise SalunError(f"{what} folder {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        extra = f" (found {', '.join(found)}: pickled weights are refused)" if found else ""
        raise SalunError(
            f"{what} folder {str(folder)!r} has no *.safetensors weights{extra}; "
            "save it with save_pretrained(..., safe_serialization=True)"
        )
    refuse_custom_code(folder, f"{what} folder")
