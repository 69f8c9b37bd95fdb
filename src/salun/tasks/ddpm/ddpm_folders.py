"""Model folders of the ``ddpm`` task: a diffusers UNet saved as ``unet/``, ``scheduler/`` and
``salun.json`` (safetensors only, local files only), written atomically and read back with the
settings that produced it."""

from __future__ import annotations

import importlib.util
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from salun.core.custom_code import refuse_custom_code
from salun.core.errors import SalunError, require_extra
from salun.core.io import (
    JsonFileError,
    check_state,
    load_tensors,
    read_json,
    replace_folder,
    write_errors,
    write_json,
)
from salun.experiment import (
    Experiment,
    load_weights,
)

META_FILE = "salun.json"


def save_ddpm(model: Any, exp: Experiment, folder: str | Path) -> Path:
    """Write ``folder/unet`` (diffusers), ``folder/scheduler`` and ``folder/salun.json``.

    The folder appears complete or not at all: it is built next to the target and renamed.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with write_errors(folder / "unet"):
            model.save_pretrained(tmp / "unet", safe_serialization=True)
        exp.task.scheduler.save_pretrained(tmp / "scheduler")
        data = exp.bundle.train
        meta = {
            "format": "salun-ddpm-v1",
            "num_classes": data.num_classes,
            "null_label": data.num_classes,
            "classes": list(data.classes),
            "image_size": data.image_size,
            "channels": data.in_channels,
            "pixel_range": [-1, 1],
            "guidance": exp.cfg.diffusion.guidance,
            "dataset": exp.cfg.data.name,
        }
        write_json(tmp / META_FILE, meta)
        replace_folder(tmp, folder)  # an existing folder is moved aside, then deleted
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        data = read_json(path, what)
    except JsonFileError as e:
        raise SalunError(f"{e.where} is corrupt ({e.reason})") from None
    if not isinstance(data, dict):
        raise SalunError(f"{what} {str(path)!r} is corrupt (not a JSON object)")
    return data


def load_ddpm(folder: str | Path):
    """(unet, scheduler, meta) from a folder written by :func:`save_ddpm`.

    Local files only, safetensors only, no code from the folder: diffusers is never allowed to
    contact the Hub, to unpickle a ``.bin`` or to import a module named by a config. Every missing or corrupt part is a one-line SalunError.
    """
    require_extra("diffusers", "generation")
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if not folder.is_dir():
        raise SalunError(f"DDPM model folder {str(folder)!r} does not exist")
    need = {
        "unet/config.json": "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors": "the unet weights (safetensors)",
        "scheduler/scheduler_config.json": "scheduler/",
        META_FILE: META_FILE,
    }
    for rel, what in need.items():
        if not (folder / rel).is_file():
            raise SalunError(f"{str(folder)!r} is not a salun DDPM folder: {what} is missing")
    _read_json_file(folder / "unet" / "config.json", "unet config")
    _read_json_file(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    meta = _read_json_file(folder / META_FILE, META_FILE)
    refuse_custom_code(folder, "DDPM model folder", diffusers=True)
    for key in ("num_classes", "null_label"):
        if key in meta and (not isinstance(meta[key], int) or meta[key] < 1):
            raise SalunError(f"{META_FILE} in {str(folder)!r} is corrupt: bad {key} {meta[key]!r}")
    g = meta.get("guidance", 2.0)
    if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g):
        raise SalunError(f"{META_FILE} in {str(folder)!r} is corrupt: bad guidance {g!r}")
    # folders resolved to absolute paths: a relative name is never taken for a Hub repo id
    kwargs = {"local_files_only": True}
    try:
        # low_cpu_mem_usage needs accelerate; asking for it without accelerate only warns
        unet = UNet2DModel.from_pretrained(
            str((folder / "unet").resolve()),
            use_safetensors=True,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            trust_remote_code=False,
            **kwargs,
        )
        scheduler = DDPMScheduler.from_pretrained(
            str((folder / "scheduler").resolve()), trust_remote_code=False, **kwargs
        )
    except Exception as e:  # diffusers raises several types for bad configs and weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SalunError(f"DDPM folder {str(folder)!r} does not load: {first}") from None
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    try:  # diffusers casts what it loads: check the file's own tensors (names, shapes, dtypes)
        state = load_tensors(weights)
    except Exception as e:  # safetensors raises its own error types
        raise SalunError(f"DDPM folder {str(folder)!r} does not load: {e}") from None
    check_state(state, unet.state_dict(), f"DDPM folder {str(folder)!r}")
    _check_labels(folder, meta, unet.config.num_class_embeds)
    return unet, scheduler, meta


def _check_labels(folder: Path, meta: dict[str, Any], embeds: Any) -> None:
    """The classes 0..num_classes-1 and the null label must be rows of the UNet's class
    embedding, the null label none of the classes (else sampling indexes past the table)."""
    if isinstance(embeds, bool) or not isinstance(embeds, int) or embeds < 2:
        raise SalunError(
            f"DDPM folder {str(folder)!r}: the unet has no class embedding "
            f"(num_class_embeds {embeds!r}); salun samples class-conditional UNets"
        )
    k = meta.get("num_classes", embeds - 1)
    null = meta.get("null_label", k)
    if not k <= null < embeds:
        raise SalunError(
            f"{META_FILE} in {str(folder)!r} is corrupt: num_classes {k} and null_label {null} "
            f"do not fit the unet's {embeds} class embeddings (need num_classes <= null_label "
            f"<= {embeds - 1})"
        )


def load_model(exp: Experiment, path: str | Path) -> nn.Module:
    """A DDPM for ``exp`` from a diffusers folder or a safetensors state dict."""
    path = Path(path)
    if path.is_dir():
        unet: Any
        unet, _, meta = load_ddpm(path)
        want = exp.bundle.train.num_classes
        if meta.get("num_classes", want) != want:
            raise SalunError(
                f"model {str(path)!r} has {meta['num_classes']} classes, the data has {want}"
            )
        fresh: Any = exp.new_model()
        bad = [k for k, v in fresh.state_dict().items() if k not in unet.state_dict()]
        if bad or tuple(unet.config.block_out_channels) != tuple(fresh.config.block_out_channels):
            raise SalunError(
                f"model {str(path)!r} does not match diffusion.widths={exp.cfg.diffusion.widths}"
            )
        return unet.to(exp.task.device)
    return load_weights(exp.new_model(), path)
