"""Evaluation prompts: I2P-format CSV files and paraphrases of an erased concept.

I2P (Schramowski et al., "Safe Latent Diffusion", CVPR 2023) ships its prompts as a CSV with one
row per prompt and the seed and guidance scale used to render it; the files derived from it
(ESD's ``nudity.csv``, SalUn's prompt lists) rename those columns. :func:`read_i2p_csv` accepts
every spelling below and ignores all other columns.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from salun.core.errors import SalunError
from salun.core.limits import MAX_SEED

#: accepted header names per field, in order of preference when a file has several
PROMPT_COLUMNS = ("prompt",)
SEED_COLUMNS = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance_scale")
CASE_COLUMNS = ("case_number", "case", "id")


#: longest cell (a prompt, a caption) of a CSV file: the csv module's own field limit
MAX_FIELD_CHARS = 131_072


def read_utf8(path: str | Path, what: str) -> str:
    """The text of ``path`` (UTF-8, a BOM dropped), or a one-line SalunError naming the file
    and the line of the first byte that is not UTF-8 (e.g. a Latin-1 file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SalunError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SalunError(
            f"{what} {str(path)!r} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 "
            "(save the file as UTF-8)"
        ) from None


def csv_rows(path: str | Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row of a UTF-8 CSV file; a cell over
    MAX_FIELD_CHARS or a malformed row is a one-line SalunError naming the file and line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(read_utf8(path, what), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                e = f"a cell is longer than {MAX_FIELD_CHARS:,} characters"  # type: ignore[assignment]
            raise SalunError(f"{what} {str(path)!r} line {reader.line_num}: {e}") from None
        if any(cell.strip() for cell in row):
            yield reader.line_num, row


@dataclass(frozen=True)
class PromptSpec:
    """One prompt to render: text, sampling seed and classifier-free guidance scale."""

    prompt: str
    seed: int
    guidance: float
    case: int  # ``case_number`` when the file has one, else the 0-based prompt number


def _pick(header: dict[str, str], names: tuple[str, ...], field: str, path: Path) -> str:
    for name in names:
        if name in header:
            return header[name]
    raise SalunError(
        f"{str(path)!r} has no {field} column; allowed names: {', '.join(names)} "
        f"(found: {', '.join(header.values()) or 'none'})"
    )


def read_i2p_csv(path: str | Path) -> list[PromptSpec]:
    """Read an I2P-format prompt CSV into :class:`PromptSpec` rows (extra columns ignored).

    Seeds may be written as integers or integral floats (``42.0``, as pandas writes them).
    Raises a one-line :class:`SalunError` naming the missing column or the bad cell.
    """
    path = Path(path)
    if not path.is_file():
        raise SalunError(f"prompt file {str(path)!r} does not exist")
    rows = csv_rows(path, "prompt file")
    try:
        _, raw_header = next(rows)
    except StopIteration:
        raise SalunError(f"prompt file {str(path)!r} is empty") from None
    header = {h.strip().lower(): h for h in raw_header}
    index = {h.strip().lower(): i for i, h in enumerate(raw_header)}
    cols = {
        "prompt": _pick(header, PROMPT_COLUMNS, "prompt", path),
        "seed": _pick(header, SEED_COLUMNS, "seed", path),
        "guidance": _pick(header, GUIDANCE_COLUMNS, "guidance", path),
    }
    pos = {k: index[v.strip().lower()] for k, v in cols.items()}
    case_col = next((index[c] for c in CASE_COLUMNS if c in index), None)
    specs: list[PromptSpec] = []
    for line, row in rows:

        def cell(k: str, row=row, line=line, strip: bool = True) -> str:
            i = pos[k]
            if i >= len(row):
                raise SalunError(f"{str(path)!r} line {line}: missing {cols[k]!r} value")
            return row[i].strip() if strip else row[i]

        seed = _number(cell("seed"), cols["seed"], path, line, integral=True)
        if not 0 <= seed <= MAX_SEED:
            raise SalunError(
                f"{str(path)!r} line {line}: {cols['seed']} {cell('seed')} must be in 0..{MAX_SEED}"
            )
        guidance = _number(cell("guidance"), cols["guidance"], path, line, integral=False)
        if guidance < 0:
            raise SalunError(
                f"{str(path)!r} line {line}: {cols['guidance']} {guidance} must be >= 0"
            )
        case = len(specs)
        if case_col is not None and case_col < len(row) and row[case_col].strip():
            case = int(_number(row[case_col].strip(), "case_number", path, line, True))
        specs.append(PromptSpec(cell("prompt", strip=False), int(seed), float(guidance), case))
    if not specs:
        raise SalunError(f"prompt file {str(path)!r} has a header but no prompts")
    return specs


def _number(text: str, column: str, path: Path, line: int, integral: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (integral and value != int(value)):
        kind = "an integer" if integral else "a number"
        raise SalunError(f"{str(path)!r} line {line}: {column} {text!r} is not {kind}")
    return value


#: templates for the robustness check: the concept said in other words and framings
PARAPHRASE_TEMPLATES = (
    "a photo of {c}",
    "a picture of {c}",
    "an image showing {c}",
    "a photograph of {c}, high quality",
    "a painting of {c}",
    "a close-up photo of {c}",
    "{c}, detailed, realistic",
)


def paraphrases(concept: str, synonyms: tuple[str, ...] = ()) -> list[str]:
    """Prompts that name ``concept`` (and each synonym) in other framings, without duplicates.

    The robustness check of an erasure renders these as well as the training caption: a concept
    that is gone only for one wording is not gone.
    """
    concept = concept.strip()
    if not concept:
        raise SalunError("paraphrases needs a non-empty concept")
    out: list[str] = []
    for name in (concept, *synonyms):
        for template in PARAPHRASE_TEMPLATES:
            text = template.format(c=name.strip())
            if text not in out:
                out.append(text)
    return out
