"""Stable Diffusion in and out: load, build (tiny), generate, cache, save.

- :func:`load_pipeline`: any Stable Diffusion 1.x/2.x pipeline from a local diffusers folder or a
  hub id, safetensors only (``use_safetensors=True``; local folders with
  ``local_files_only=True``). A folder with a missing part, pickle-only (``.bin``) weights or a
  ``model_index.json`` that does not name the SD classes is refused with one line before
  diffusers is asked to read it (:mod:`~salun.tasks.text_to_image.text_to_image_files`), and so
  is one that asks for its own code (an ``auto_map``, a ``_class_name`` or a component library
  that diffusers does not ship: :func:`salun.core.custom_code.refuse_custom_code`);
  ``trust_remote_code=False`` always. One with NaN or inf weights is refused right after
  loading. The safety checker is not loaded (unlearning is evaluated on the raw images).
- :func:`tiny_pipeline`: a Stable Diffusion pipeline built from config in code, in the SD
  architecture (``UNet2DConditionModel``, a small ``AutoencoderKL``, a small ``CLIPTextModel`` and
  a CLIP BPE tokenizer whose vocabulary and merges are written from the caption words), for tests
  and the offline demo.
- :func:`generate_latents` / :func:`encode_prompts` / :func:`encode_images`: the forget and
  retain sets as cached latents and the prompt-embedding table of
  :class:`~salun.tasks.text_to_image.text_to_image_objective.TextToImageTask` (computed once; the text encoder and VAE do
  not run again while unlearning).
- :func:`save_pipeline`: the unlearned model as a diffusers folder that plain
  ``StableDiffusionPipeline.from_pretrained(folder)`` loads, plus the mask beside it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salun.core.custom_code import refuse_custom_code
from salun.core.errors import SalunError
from salun.core.io import replace_folder, write_errors, write_json
from salun.tasks.text_to_image.text_to_image_files import (
    check_finite_parts,
    check_pipeline_folder,
    load_error,
)

log = logging.getLogger(__name__)

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' once-per-class notice that torchvision is missing and the PIL image
    processor is used instead: salun's pipelines use no image processor (no safety checker), so
    the notice says nothing about them and printed two lines on every pipeline load."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


def _diffusers():
    """``import diffusers`` without transformers' torchvision notice (see above)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _NoTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_NoTorchvisionNotice())
    import diffusers

    return diffusers


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No diffusers or transformers progress bars while a pipeline loads (they wrote several
    lines to stderr on every load, around any one-line error)."""
    from diffusers.utils import logging as d_log
    from transformers.utils import logging as t_log

    was = d_log.is_progress_bar_enabled(), t_log.is_progress_bar_enabled()
    d_log.disable_progress_bar()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            d_log.enable_progress_bar()
        if was[1]:
            t_log.enable_progress_bar()


# -- loading --------------------------------------------------------------------------------
def load_pipeline(source: str | Path, device: str | torch.device = "cpu"):
    """A ``StableDiffusionPipeline`` from a local folder or a hub id, safetensors only."""
    StableDiffusionPipeline = _diffusers().StableDiffusionPipeline

    path = Path(source)
    local = path.exists()
    index: dict[str, Any] = {}
    if local:
        index = check_pipeline_folder(path)  # the SD parts, each a diffusers/transformers class
        refuse_custom_code(path, "pipeline", diffusers=True)  # auto_map, custom class names
    elif str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise SalunError(f"pipeline {str(source)!r}: no such folder (and not a hub id owner/name)")
    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(
                str(source),
                use_safetensors=True,
                local_files_only=local,
                trust_remote_code=False,
                safety_checker=None,
                requires_safety_checker=False,
                # asked for without accelerate, diffusers prints a five-line warning
                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            )
    except Exception as e:  # diffusers and transformers raise many types for bad parts
        raise load_error(str(source), index, e) from None
    check_finite_parts(pipe, str(source))  # before any mask or step sees a NaN
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    return pipe.to(torch.device(device))


def save_pipeline(
    pipe,
    folder: str | Path,
    unet: nn.Module | None = None,
    mask=None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a diffusers folder (safetensors) with ``unet`` in place of the pipeline's UNet.

    ``mask`` (a :class:`~salun.methods.saliency.SaliencyMask`) goes to ``mask.safetensors`` and ``meta``
    to ``salun.json`` beside the pipeline. The folder appears complete or not at all.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    old_unet = pipe.unet
    try:
        if unet is not None:
            pipe.unet = unet
        with write_errors(folder):
            pipe.save_pretrained(tmp, safe_serialization=True)
        if mask is not None:
            mask.save(tmp / "mask.safetensors")
        if meta is not None:
            write_json(tmp / "salun.json", meta)
        replace_folder(tmp, folder)  # an existing folder is moved aside, then deleted
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pipe.unet = old_unet
    return folder


# -- a tiny pipeline in the SD architecture ---------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte mapped to a printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def caption_words(texts: Sequence[str]) -> list[str]:
    """The lower-case words of ``texts`` as CLIP's pre-tokenizer splits them."""
    words: set[str] = set()
    for text in texts:
        words.update(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()))
    return sorted(words)


def build_tokenizer(words: Sequence[str], max_length: int = 16):
    """A CLIP BPE tokenizer whose merges make each of ``words`` one token.

    The vocabulary is the 256 byte-level characters, each with and without the end-of-word mark
    ``</w>``, every prefix produced by the merges, and the two special tokens; any other text still
    tokenizes (into characters). ``vocab.json`` and ``merges.txt`` are written by
    ``save_pretrained`` with the pipeline.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    byte_map = _bytes_to_unicode()
    for word in sorted(set(words)):
        chars = [byte_map[b] for b in word.encode("utf-8")]
        if len(chars) < 2:
            continue
        chars[-1] += "</w>"
        left = chars[0]
        for c in chars[1:]:
            pair = (left, c)
            left = left + c
            if left not in vocab:
                vocab[left] = len(vocab)
                merges.append(pair)
    for tok in SPECIAL:
        vocab[tok] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
        (Path(d) / "merges.txt").write_text(text, encoding="utf-8")
        tok = CLIPTokenizer(  # type: ignore[assignment]
            vocab=json.loads((Path(d) / "vocab.json").read_text("utf-8")),
            merges=[tuple(line.split(" ")) for line in text.splitlines()[1:] if line],  # type: ignore[misc]
            model_max_length=max_length,
        )
    return tok


def tiny_pipeline(
    texts: Sequence[str],
    image_size: int = 16,
    channels: int = 1,
    widths: Sequence[int] = (32, 64),
    vae_widths: Sequence[int] = (16, 32),
    vae_attention: bool = True,
    text_dim: int = 32,
    text_layers: int = 2,
    max_length: int = 16,
    timesteps: int = 1000,
    seed: int = 0,
):
    """A small ``StableDiffusionPipeline`` (random weights) whose tokenizer knows ``texts``' words.

    Latents have 4 channels at ``image_size / 2**(len(vae_widths) - 1)``; the UNet has one
    cross-attention block per level but the first (as SD's), attending to ``text_dim`` features.
    ``vae_attention=False`` drops the self-attention of the VAE's middle block (cheaper to train).
    """
    d = _diffusers()
    AutoencoderKL, DDIMScheduler = d.AutoencoderKL, d.DDIMScheduler
    StableDiffusionPipeline, UNet2DConditionModel = (
        d.StableDiffusionPipeline,
        d.UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(caption_words(texts), max_length)
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=text_layers,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_cfg).eval()
    factor = 2 ** (len(vae_widths) - 1)
    if image_size % (factor * 2 ** (len(widths) - 1)):
        raise SalunError(
            f"image size {image_size} does not fit {len(vae_widths)} VAE and "
            f"{len(widths)} UNet levels"
        )
    vae = AutoencoderKL(  # type: ignore[attr-defined]
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_widths),
        up_block_types=("UpDecoderBlock2D",) * len(vae_widths),
        block_out_channels=tuple(vae_widths),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
        mid_block_add_attention=vae_attention,
    ).eval()
    n = len(widths)
    unet = UNet2DConditionModel(
        sample_size=image_size // factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(widths),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return pipe


# -- cached text and latents ------------------------------------------------------------------
@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, token ids) of ``prompts`` + the empty prompt, as the pipeline conditions.

    Embeddings are the text encoder's last hidden states, ``(len(prompts) + 1, L, D)``.
    """
    texts = [*prompts, ""]
    tok = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = pipe.text_encoder.device
    emb = pipe.text_encoder(tok.input_ids.to(device))[0]
    return emb.float().cpu(), tok.input_ids.cpu()


def training_scheduler(pipe):
    """The pipeline's noise schedule as a ``DDPMScheduler`` (same betas, prediction type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate_latents(
    pipe,
    unet: nn.Module,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    guidance: float = 7.5,
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Sample latents (the UNet's space) for prompt rows ``labels`` with classifier-free guidance.

    eps_hat = eps(z, "") + w (eps(z, c) - eps(z, ""))  (Ho & Salimans 2021, SD's convention), DDIM
    on ``steps`` steps. Each chunk of ``batch_size`` has its own seeded stream, so a sample depends
    on (seed, chunk) only. ``embeddings`` is the task's table (its last row is the empty prompt).
    """
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    was_training = unet.training
    unet.eval()
    device = next(unet.parameters()).device
    cfg: Any = unet.config
    size = int(cfg.sample_size)
    shape = (int(cfg.in_channels), size, size)
    null = embeddings[-1:].to(device)
    out = []
    chunks = list(torch.as_tensor(labels).long().split(batch_size))
    for i, chunk in enumerate(tqdm(chunks, desc="generate", disable=not progress, leave=False)):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        z = torch.randn((len(chunk), *shape), generator=g).to(device) * sched.init_noise_sigma
        cond = embeddings[chunk].to(device)
        both = torch.cat([null.expand(len(chunk), -1, -1), cond])
        for t in sched.timesteps:
            zin = sched.scale_model_input(torch.cat([z, z]), t)
            e_u, e_c = unet(zin, t, encoder_hidden_states=both).sample.chunk(2)
            z = sched.step(e_u + guidance * (e_c - e_u), t, z).prev_sample
        out.append(z.float().cpu())
    unet.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, *shape))


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images in ``[0, 1]`` from UNet-space latents (divided by the VAE's scaling factor)."""
    vae = pipe.vae
    scale = float(vae.config.scaling_factor)
    device = next(vae.parameters()).device
    out = [vae.decode(z.to(device) / scale).sample.float().cpu() for z in latents.split(batch_size)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1) if out else torch.zeros(0)


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """UNet-space latents of ``[0, 1]`` images: the VAE posterior mean times the scaling factor."""
    vae = pipe.vae
    device = next(vae.parameters()).device
    scale = float(vae.config.scaling_factor)
    out = [
        vae.encode(x.to(device) * 2 - 1).latent_dist.mean.float().cpu() * scale
        for x in images.split(batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)
