"""Atomic file writes and content hashes.

Every artefact is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file under the final name. Weights are stored as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    from salun.core.distributed import is_main

    if not is_main():  # under torchrun only rank 0 writes; the others write to a scratch file
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_figure(path: str | os.PathLike, draw: Callable[[Path], None]) -> None:
    """Call ``draw(tmp_path)`` (which must write a PNG there) and move it into place."""
    with atomic_path(path) as tmp:
        draw(tmp)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_array(arr: np.ndarray | torch.Tensor) -> str:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(str((arr.dtype.str, arr.shape)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def hash_state(model: torch.nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(hash_array(t.float() if t.dtype == torch.bfloat16 else t).encode())
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode())


# -- run folders: complete or absent ------------------------------------------------------------
INCOMPLETE = "INCOMPLETE"


def _resolved(path: str | os.PathLike, user: bool = False) -> Path:
    """``path`` absolute, symlinks resolved (``~`` expanded when ``user``: config paths)."""
    return Path(os.path.expanduser(os.fspath(path)) if user else path).resolve()


#: check_out's decision per resolved --out: may staged_folder replace a folder found there?
_MAY_REPLACE: dict[Path, bool] = {}


def check_out(
    out: str | os.PathLike | None,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    replaces: bool = True,
) -> Path:
    """The one check of a command's ``--out``, before any work starts (every command that writes
    an ``--out`` folder calls it).

    Refuses an empty path, a file, a non-empty folder (unless ``overwrite``; ``replaces=False``:
    a command that writes into the folder without replacing it), and any folder that is, or
    holds, the current folder, the home folder, the root or one of ``inputs`` (the command's
    model, mask, split, pipeline, cache and data folders): symlinks and relative paths resolved.
    Refuses a folder that another salun run is writing (:func:`out_lock`). Remembers whether
    the folder may be replaced, so a run never replaces a folder that appeared while it ran
    (another run's result) unless ``overwrite``.
    """
    from salun.core.errors import SalunError

    if out is None or not str(out).strip():
        raise SalunError("--out is empty; give the path of a folder for the run")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SalunError(f"--out {str(out)!r} is a file, not a folder; give a folder path")
    where = _resolved(out)
    guarded = [
        ("the current folder", Path.cwd()),
        ("your home folder", Path.home()),
        ("the root folder", Path(where.anchor)),
    ]
    guarded += [(f"the input {str(p)!r}", Path(p)) for p in inputs if p is not None and str(p)]
    for what, p in guarded:
        target = _resolved(p, user=True)
        if where == target or where in target.parents:
            held = "is" if where == target else "holds"
            raise SalunError(
                f"--out {str(out)!r} {held} {what}; replacing it would delete it: give a new "
                "folder for the run"
            )
    if replaces and path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SalunError(
            f"--out {str(out)!r} is not empty; pass --overwrite to replace it, or give a new folder"
        )
    with out_lock(out, create=False):  # free now: no other run is writing it
        pass
    _MAY_REPLACE[where] = overwrite
    return path


@contextmanager
def out_lock(out: str | os.PathLike, create: bool = True) -> Iterator[None]:
    """Hold the inter-process lock (filelock) of the run folder ``out`` (``.NAME.lock`` beside
    it), or fail at once with one line when another salun run holds it. Re-entrant within a
    thread; the lock file is removed when the last holder releases it. ``create=False``: no
    lock (and no folder made) while the parent folder does not exist yet."""
    from filelock import FileLock, Timeout

    from salun.core.distributed import is_main
    from salun.core.errors import SalunError

    if not is_main():  # under torchrun only rank 0 writes the run folder
        yield
        return
    target = Path(os.path.abspath(out))
    if not create and not target.parent.is_dir():
        yield
        return
    _make_parent(target)
    lock = FileLock(str(target.parent / f".{target.name}.lock"), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SalunError(
            f"--out {str(out)!r} is being written by another salun run; wait for it to finish "
            "or give another folder"
        ) from None
    except OSError as e:
        raise SalunError(f"cannot lock {str(out)!r}: {e.strerror}") from None
    try:
        yield
    finally:
        lock.release()
        if not lock.is_locked:
            with suppress(OSError):
                os.unlink(lock.lock_file)


def _make_parent(path: Path) -> None:
    from salun.core.errors import SalunError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SalunError(f"cannot create the folder for {str(path)!r}: {e.strerror}") from None


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Build a run folder in a hidden sibling ``.NAME.partial-*`` and rename it onto ``out``.

    The folder appears complete or not at all. While it is being built (and if the process is
    killed), the sibling holds a file ``INCOMPLETE`` saying it is an interrupted run, not a
    result. An existing ``out`` (the caller checked ``--overwrite``) is replaced at the end, so
    no file of the old run (a stale mask) survives beside the new model.
    """
    from salun.core.distributed import is_main
    from salun.core.errors import SalunError

    if not is_main():  # under torchrun only rank 0 writes the run folder; the others scratch
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    given = out
    out = Path(os.path.abspath(out))
    may_replace = _MAY_REPLACE.pop(_resolved(out), True)
    with out_lock(out):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as e:
            raise SalunError(f"cannot write into {str(out.parent)!r}: {e.strerror}") from None
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            (tmp / INCOMPLETE).write_text(
                f"interrupted salun run (pid {os.getpid()}) for {out}; not a result\n",
                encoding="utf-8",
            )
            yield tmp
            (tmp / INCOMPLETE).unlink()
            if not may_replace and out.is_dir() and any(out.iterdir()):
                raise SalunError(
                    f"--out {str(given)!r} was written by another salun run while this one ran; "
                    "its result is kept: pass --overwrite to replace it, or give a new folder"
                )
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def replace_folder(src: Path, dst: Path) -> None:
    """Rename folder ``src`` onto ``dst``; an existing ``dst`` is moved aside, then deleted."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        old.rename(dst)  # put the previous result back
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
