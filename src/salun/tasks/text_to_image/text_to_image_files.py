"""Files a ``text_to_image`` run reads, checked before any model work: a diffusers pipeline
folder (its parts, safetensors weights, and a ``model_index.json`` that names the Stable
Diffusion classes, so diffusers is never sent to another library or a swapped part) and captioned
image folders (``captions.csv`` or a ``.txt`` beside each image). Every problem is one line
naming the file, and the row where there is one.

Limits: a caption (a CSV cell or a ``.txt`` file) is at most
:data:`~salun.eval.prompts.MAX_FIELD_CHARS` characters; an image at most PIL's
``Image.MAX_IMAGE_PIXELS`` pixels (its decompression-bomb guard, about 89 million); every image
and caption file lies inside the image folder once symlinks and ``..`` are resolved.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from salun.core.errors import SalunError
from salun.eval.prompts import MAX_FIELD_CHARS, csv_rows, read_utf8

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")
#: the libraries a model_index.json may name, and the class each part must be (or subclass)
LIBRARIES = ("diffusers", "transformers")
PART_CLASSES = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "PreTrainedModel"),
    "tokenizer": ("transformers", "PreTrainedTokenizerBase"),
    "scheduler": ("diffusers", "SchedulerMixin"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# -- pipeline folders -------------------------------------------------------------------------
def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """Refuse a folder that is not a complete safetensors SD pipeline, naming what is wrong;
    returns its model_index.json."""
    if not (folder / "model_index.json").is_file():
        raise SalunError(
            f"{str(folder)!r} is not a diffusers pipeline folder (no model_index.json)"
        )
    index = _model_index(folder)
    for part in PARTS:
        if not (folder / part).is_dir():
            raise SalunError(f"pipeline {str(folder)!r} has no {part}/ folder")
    for part in WEIGHTED:
        files = [p.name for p in (folder / part).iterdir()]
        if not any(f.endswith(".safetensors") for f in files):
            if any(f.endswith((".bin", ".ckpt", ".pt", ".pth")) for f in files):
                raise SalunError(
                    f"pipeline {str(folder)!r}: {part}/ has only pickle weights (.bin); salun "
                    "loads safetensors only (convert them with diffusers' save_pretrained)"
                )
            raise SalunError(f"pipeline {str(folder)!r}: {part}/ has no .safetensors weights")
    return index


def _model_index(folder: Path) -> dict[str, Any]:
    """model_index.json, each part given as [library, class] of the class SD needs there."""
    path = folder / "model_index.json"
    try:
        index = json.loads(read_utf8(path, "model_index.json"))
    except (ValueError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else e
        raise SalunError(f"{str(path)!r} is not valid JSON ({reason})") from None
    if not isinstance(index, dict):
        raise SalunError(f"{str(path)!r} must be a JSON object, got {type(index).__name__}")
    if not isinstance(index.get("_class_name", ""), str):
        raise SalunError(f"{str(path)!r}: _class_name must be a string")
    for key, value in index.items():
        if key in PART_CLASSES:
            _check_part(path, key, value)
        elif isinstance(value, list) and not _optional_entry(value):
            raise SalunError(
                f"{str(path)!r}: {key} must be [library, class] of diffusers or transformers "
                f"(or [null, null]), got {json.dumps(value)[:80]}"
            )
    return index


def _check_part(path: Path, part: str, value: Any) -> None:
    lib, base = PART_CLASSES[part]
    cls = None
    if (
        isinstance(value, list)
        and len(value) == 2
        and value[0] == lib
        and isinstance(value[1], str)
        and value[1].isidentifier()
    ):
        cls = getattr(_library(lib), value[1], None)
    want = getattr(_library(lib), base)
    if not (isinstance(cls, type) and issubclass(cls, want)):
        raise SalunError(
            f'{str(path)!r}: {part} must be ["{lib}", a {base} class], got {json.dumps(value)[:80]}'
        )


def _library(name: str) -> Any:
    """diffusers or transformers, the two libraries a part may name (no import by a name read
    from a file)."""
    if name == "diffusers":
        import diffusers

        return diffusers
    import transformers

    return transformers


def _optional_entry(value: list[Any]) -> bool:
    """An entry outside the SD parts: [null, null], or a class of diffusers, transformers or
    a diffusers pipeline package (e.g. the safety checker's ["stable_diffusion", ...])."""
    if len(value) != 2 or not all(v is None or isinstance(v, str) for v in value):
        return False
    lib = value[0]
    if lib is None or lib in LIBRARIES:
        return True
    return lib.isidentifier() and importlib.util.find_spec(f"diffusers.pipelines.{lib}") is not None


def load_error(source: str, index: dict[str, Any], e: Exception) -> SalunError:
    """One line for an exception diffusers raised loading ``source``, naming the part whose
    weights do not fit its config where the error says which class it was."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    if first.startswith("Error(s) in loading state_dict for"):
        cls = first.rstrip(":").rsplit(" ", 1)[-1]
        part = next(
            (p for p in PARTS if isinstance(index.get(p), list) and index[p][1:] == [cls]), cls
        )
        detail = lines[1] if len(lines) > 1 else first
        return SalunError(
            f"cannot load pipeline {source!r}: {part}/ weights do not fit {part}/config.json "
            f"({detail.rstrip('.')})"
        )
    return SalunError(f"cannot load pipeline {source!r}: {first}")


def check_finite_parts(pipe, source: str) -> None:
    """Refuse a pipeline with NaN or inf weights in the UNet, VAE or text encoder."""
    for part in WEIGHTED:
        for name, t in getattr(pipe, part).state_dict().items():
            if t.is_floating_point() and not bool(t.isfinite().all()):
                raise SalunError(
                    f"pipeline {source!r}: {part}/ holds non-finite weights (NaN or inf) in "
                    f"{name!r}"
                )


# -- captioned image folders ------------------------------------------------------------------
def read_caption_folder(folder: str | Path, image_size: int | None = None):
    """(images in [0, 1], captions) from a folder of images with ``captions.csv`` (columns
    ``file,caption``) or a ``.txt`` file beside each image. Every image and caption file must
    lie inside ``folder`` (``..``, absolute paths and symlinks out of it are refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SalunError(f"image folder {str(folder)!r} does not exist")
    root = folder.resolve()
    table = folder / "captions.csv"
    entries: list[tuple[Path, str, str]] = []  # (image, caption, the row that named it)
    if table.is_file():
        entries = _table_entries(folder, table)
    else:
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                txt = p.with_suffix(".txt")
                if not txt.is_file():
                    raise SalunError(f"image {p.name!r} in {str(folder)!r} has no caption file")
                _inside(root, txt, f"caption file {str(txt)!r}")
                caption = read_utf8(txt, "caption file").strip()
                _check_caption(caption, f"caption file {str(txt)!r}")
                entries.append((p, caption, ""))
    if not entries:
        raise SalunError(f"no captioned images in {str(folder)!r}")
    images = [_read_image(root, p, where, image_size) for p, _, where in entries]
    return torch.stack(images), [c for _, c, _ in entries]


def _table_entries(folder: Path, table: Path) -> list[tuple[Path, str, str]]:
    rows = csv_rows(table, "caption table")
    header = next(rows, (0, []))[1]
    if "file" not in header or "caption" not in header:
        raise SalunError(f"{str(table)!r} needs the columns file,caption")
    fi, ci = header.index("file"), header.index("caption")
    entries = []
    for line, row in rows:
        where = f"{str(table)!r} line {line}"
        name = row[fi].strip() if fi < len(row) else ""
        if not name:
            raise SalunError(f"{where}: no file name")
        caption = row[ci] if ci < len(row) else ""
        _check_caption(caption, f"{where} ({name!r})")
        entries.append((folder / name, caption, where))
    return entries


def _check_caption(caption: str, where: str) -> None:
    if not caption.strip():
        raise SalunError(f"{where}: no caption")
    if len(caption) > MAX_FIELD_CHARS:
        raise SalunError(
            f"{where}: the caption has {len(caption):,} characters; at most {MAX_FIELD_CHARS:,}"
        )


def _inside(root: Path, path: Path, where: str) -> None:
    """Refuse ``path`` unless it resolves (symlinks followed) to a place inside ``root``."""
    if not path.resolve().is_relative_to(root):
        raise SalunError(
            f"{where + ': ' if where else ''}{str(path)!r} leads outside the image folder "
            f"{str(root)!r}; images and captions must lie inside it"
        )


def _read_image(root: Path, path: Path, where: str, size: int | None) -> torch.Tensor:
    """``path`` as a [0, 1] RGB tensor (resized to ``size``); ``where`` names the row."""
    from PIL import Image

    at = f" ({where})" if where else ""
    try:
        _inside(root, path, where)
        found = path.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise SalunError(f"captioned image {str(path)[:200]!r}{at}: {e.strerror}") from None
    if not found:
        raise SalunError(f"captioned image {str(path)!r} does not exist{at}")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if limit and im.width * im.height > limit:
                    raise SalunError(
                        f"image {str(path)!r}{at} has {im.width} x {im.height} pixels, "
                        f"over the limit of {limit:,}"
                    )
                rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, SalunError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SalunError(f"image {str(path)!r}{at} cannot be read: {first}") from None
    if size:
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return t.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255
