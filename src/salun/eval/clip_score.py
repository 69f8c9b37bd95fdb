"""CLIP score of generated images against their prompts, from a local CLIP folder.

CLIPScore (Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning",
EMNLP 2021) in the form text-to-image papers report (torchmetrics' convention):
``100 * max(cos(E_image, E_text), 0)`` averaged over image-prompt pairs. The CLIP model and its
processor come from a local ``save_pretrained`` folder (e.g. openai/clip-vit-large-patch14)
through ``transformers``, safetensors only, never its own code (``trust_remote_code=False``;
a folder with an ``auto_map`` is refused); nothing downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from salun.core.errors import SalunError
from salun.eval._images import check_safetensors_folder, to_pil

log = logging.getLogger(__name__)

SCALE = 100.0


def load_clip(clip_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """``(CLIPModel, CLIPProcessor)`` from a local folder; refuses pickled weights."""
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:
        raise SalunError(
            f"CLIP score needs transformers: pip install 'salun[sd-eval]' ({e})"
        ) from e
    folder = Path(clip_dir)
    check_safetensors_folder(folder, "CLIP model")
    try:
        model = CLIPModel.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
        processor = CLIPProcessor.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as e:
        raise SalunError(
            f"CLIP folder {str(folder)!r} does not load: {str(e).splitlines()[0]}"
        ) from e
    return model.to(device).eval(), processor  # type: ignore[arg-type]


@torch.no_grad()
def clip_score(
    images: Any,
    prompts: list[str],
    clip_dir: str | Path,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """CLIP score of each image against its prompt (same order); returns mean, std, per-image."""
    pil = to_pil(images)
    if len(pil) != len(prompts):
        raise SalunError(f"clip_score got {len(pil)} images but {len(prompts)} prompts")
    if not pil:
        raise SalunError("clip_score needs at least one image")
    model, processor = load_clip(clip_dir, device)
    max_len = int(model.config.text_config.max_position_embeddings)
    scores: list[float] = []
    for start in range(0, len(pil), batch_size):
        batch = processor(
            text=list(prompts[start : start + batch_size]),
            images=pil[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        img = model.get_image_features(pixel_values=batch["pixel_values"])
        txt = model.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        img, txt = _tensor(img), _tensor(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        scores.extend((SCALE * cos.clamp(min=0)).cpu().tolist())
    t = torch.tensor(scores, dtype=torch.float64)
    log.info("CLIP score over %d images: %.3f", len(scores), float(t.mean()))
    return {
        "clip_score": float(t.mean()),
        "std": float(t.std()) if len(scores) > 1 else 0.0,
        "per_image": scores,
        "n": len(scores),
        "model": Path(clip_dir).name,
        "definition": "100 * max(cos(image, text), 0), mean over pairs",
    }


def _tensor(out: Any) -> torch.Tensor:
    # transformers 5 may return a model output holding the pooled projection
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise SalunError(f"unexpected CLIP feature output {type(out).__name__}")
