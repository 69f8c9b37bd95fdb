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


def verify_audit(folder: str | Path) -> dict[str, Any]:
    """Load ``audit.json`` and check every file's sha256; a mismatch is a one-line SalunError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SalunError(f"run folder {str(folder)!r} does not exist")
    if (folder / INCOMPLETE).exists():
        raise SalunError(
            f"{str(folder)!r} is an interrupted run (it holds {INCOMPLETE}), not a result"
        )
    path = folder / AUDIT_FILE
    if not path.is_file():
        raise SalunError(f"{str(folder)!r} has no {AUDIT_FILE} (only unlearning runs are audited)")
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise SalunError(f"{str(path)!r} is not valid JSON: {e}") from None
    files = record.get("files") if isinstance(record, dict) else None
    if record.get("format") != AUDIT_FORMAT or not isinstance(files, dict):
        raise SalunError(f"{str(path)!r} is not a {AUDIT_FORMAT} record")
    present = set(_files(folder))
    for rel, want in sorted(files.items()):
        if rel not in present:
            raise SalunError(f"audit failed: {rel} is listed in {AUDIT_FILE} but missing")
        if sha256_file(folder / rel) != want:
            raise SalunError(f"audit failed: {rel} changed since the run (sha256 differs)")
    extra = sorted(present - set(files))
    if extra:
        raise SalunError(f"audit failed: {extra[0]} is not part of the run ({AUDIT_FILE})")
    return record
