"""Audit record of an unlearning run (``audit.json``) and its verification.

A model owner who unlearns because of a deletion request must later show what was forgotten,
from which model, how, and with what result. ``audit.json`` records: the forgotten data (the
scenario, the class or the indices, and the hash of the forget indices), the original model's
content hash, the method with its resolved config, the result model's content hash, the metrics
against Retrain or the original, library versions, and the sha256 of every other file in the run
folder. :func:`verify_audit` recomputes those file hashes (``salun audit RUN_DIR``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from salun.core.errors import SalunError
from salun.core.io import INCOMPLETE, hash_obj, read_json, sha256_file, write_json

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = "salun-audit-v1"


def _files(folder: Path) -> list[str]:
    """Relative paths of every plain file in ``folder`` (recursively), except audit.json and
    the INCOMPLETE marker of a folder still being built (verify_audit refuses such folders)."""
    out = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel not in (AUDIT_FILE, INCOMPLETE):  # the marker goes before the rename
                out.append(rel)
    return sorted(out)


def write_audit(
    folder: str | Path,
    *,
    split: Any,
    original_hash: str,
    result_hash: str,
    config: dict[str, Any],
    result: dict[str, Any],
) -> dict[str, Any]:
    """Write ``folder/audit.json``; call it last, when every other file of the run is written."""
    folder = Path(folder)
    forget = split.forget.tolist()
    metrics: dict[str, Any] = {k: result.get(k) for k in ("metrics", "gap") if k in result}
    for ref in ("retrain", "original"):
        if isinstance(result.get(ref), dict) and "metrics" in result[ref]:
            metrics[ref] = result[ref]["metrics"]
    record = {
        "format": AUDIT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "forgotten": {
            "dataset": split.dataset,
            "scenario": split.scenario,
            "forget_class": split.forget_class,
            "forget_class_name": split.forget_class_name,
            "count": len(forget),
            "indices": forget if split.forget_class is None else None,
            "indices_hash": hash_obj(forget),
            "split_hash": split.hash,
        },
        "original_model_hash": original_hash,
        "method": config.get("unlearn", {}).get("method"),
        "config": config,
        "result_model_hash": result_hash,
        "metrics": _short(metrics),
        "versions": result.get("versions", {}),
        "files": {rel: sha256_file(folder / rel) for rel in _files(folder)},
    }
    write_json(folder / AUDIT_FILE, record)
    return record


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers only (definitions and per-class tables stay in metrics.json)."""
    keep = ("UA", "MIA-Efficacy", "RA", "TA", "other_acc", "FID", "Avg. Gap", "ToW")
    out: dict[str, Any] = {}
    for name, m in metrics.items():
        if isinstance(m, dict):
            out[name] = {k: m[k] for k in keep if k in m}
    return out


def _scan(folder: Path) -> list[str]:
    """:func:`_files` for verification: refuses what a hash cannot vouch for, naming it: a
    symbolic link (to a folder or a file, whose target may change), an empty folder, and
    anything that is not a regular file (a FIFO would hang the read)."""
    import stat

    for root, dirs, names in os.walk(folder):
        for name in sorted(dirs + names):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SalunError(f"audit failed: {rel} is a symbolic link; a run holds plain files")
            if stat.S_ISDIR(mode):
                if not any(p.iterdir()):
                    raise SalunError(f"audit failed: {rel} is an empty folder, not part of the run")
            elif not stat.S_ISREG(mode):
                raise SalunError(f"audit failed: {rel} is not a regular file")
    return _files(folder)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_record(record: Any, path: Path) -> dict[str, Any]:
    """The shape of an ``audit.json`` (it is not hashed itself): every field the verification
    and ``salun audit`` read, with its type."""
    where = f"{str(path)!r}"
    if not isinstance(record, dict) or record.get("format") != AUDIT_FORMAT:
        raise SalunError(f"{where} is not a {AUDIT_FORMAT} record")
    f = record.get("forgotten")
    text = ("created", "original_model_hash", "result_model_hash")
    fields: list[tuple[str, bool]] = [
        ("files", isinstance(record.get("files"), dict)),
        ("forgotten", isinstance(f, dict)),
        *((k, isinstance(record.get(k), str)) for k in text),
        ("method", isinstance(record.get("method"), str | None)),
        ("metrics", isinstance(record.get("metrics", {}), dict)),
        ("versions", isinstance(record.get("versions", {}), dict)),
    ]
    if isinstance(f, dict):
        fields += [
            ("forgotten.dataset", isinstance(f.get("dataset"), str)),
            ("forgotten.scenario", isinstance(f.get("scenario"), str)),
            ("forgotten.count", isinstance(f.get("count"), int)),
            ("forgotten.indices_hash", isinstance(f.get("indices_hash"), str)),
            ("forgotten.split_hash", isinstance(f.get("split_hash"), str)),
        ]
    for key, ok in fields:
        if not ok:
            raise SalunError(f"{where} is not a {AUDIT_FORMAT} record: bad or missing {key}")
    for rel, want in record["files"].items():
        if not isinstance(want, str) or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise SalunError(f"{where} is not a {AUDIT_FORMAT} record: bad files entry {rel!r}")
    for name, m in record.get("metrics", {}).items():
        if not isinstance(m, dict) or not all(_is_num(v) for v in m.values()):
            raise SalunError(f"{where} is not a {AUDIT_FORMAT} record: bad metrics of {name!r}")
    return record


def _check_split(folder: Path, record: dict[str, Any]) -> None:
    """What ``audit.json`` says was forgotten is what the run's (hashed) ``split.json`` holds."""
    if "split.json" not in record["files"]:
        return
    split = read_json(folder / "split.json", "split file")
    f = record["forgotten"]
    same = isinstance(split, dict) and (
        split.get("hash") == f["split_hash"]
        and split.get("forget_class") == f.get("forget_class")
        and hash_obj(split.get("forget")) == f["indices_hash"]
    )
    if not same:
        raise SalunError(
            f"audit failed: {AUDIT_FILE} says it forgot other data than split.json holds"
        )


def verify_audit(folder: str | Path) -> dict[str, Any]:
    """Load ``audit.json`` and check every file's sha256; a mismatch is a one-line SalunError.

    The folder must hold plain files only (no symbolic links, FIFOs or empty folders), and
    what ``audit.json`` says was forgotten must be what the run's ``split.json`` holds.
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise SalunError(f"run folder {str(folder)!r} is a symbolic link; give the folder itself")
    if not folder.is_dir():
        raise SalunError(f"run folder {str(folder)!r} does not exist")
    if (folder / INCOMPLETE).exists():
        raise SalunError(
            f"{str(folder)!r} is an interrupted run (it holds {INCOMPLETE}), not a result"
        )
    if not any(folder.iterdir()):
        raise SalunError(f"run folder {str(folder)!r} is empty; it holds no run to audit")
    present = set(_scan(folder))  # refuses links, FIFOs and empty folders, audit.json's too
    path = folder / AUDIT_FILE
    if not path.is_file():
        raise SalunError(f"{str(folder)!r} has no {AUDIT_FILE} (only unlearning runs are audited)")
    record = _check_record(read_json(path, "audit record"), path)
    files = record["files"]
    for rel, want in sorted(files.items()):
        if rel not in present:
            raise SalunError(f"audit failed: {rel} is listed in {AUDIT_FILE} but missing")
        if sha256_file(folder / rel) != want:
            raise SalunError(f"audit failed: {rel} changed since the run (sha256 differs)")
    extra = sorted(present - set(files))
    if extra:
        raise SalunError(f"audit failed: {extra[0]} is not part of the run ({AUDIT_FILE})")
    _check_split(folder, record)
    return record
