"""Atomic file writes and content hashes.

Every artefact is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file under the final name. Weights are stored as safetensors.
"""

from __future__ import annotations

import errno
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

from salun.core.errors import SalunError


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


#: Bounds on every JSON file salun reads back (split.json, metrics.json, audit.json, run.json,
#: salun.json, configs of model folders): larger or deeper files are refused with one line.
MAX_JSON_BYTES = 256 << 20
MAX_JSON_DEPTH = 64


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


class JsonFileError(SalunError):
    """A JSON file salun reads back is unusable: ``where`` (what and path) ``is`` ``reason``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where} is {reason}")
        self.where, self.reason = where, reason


def parse_json(text: str | bytes, where: str) -> Any:
    """Parse JSON text salun reads back; any failure is a one-line SalunError naming ``where``
    (its ``where`` and ``reason`` attributes let a caller word it its own way).

    Nesting is bounded (:data:`MAX_JSON_DEPTH`) so no reader meets a RecursionError later.
    """
    try:
        obj = json.loads(text)
    except RecursionError:
        obj, deep = None, True
    except (ValueError, UnicodeDecodeError) as e:
        raise JsonFileError(where, f"not valid JSON: {e}") from None
    else:
        deep = json_depth(obj) > MAX_JSON_DEPTH
    if deep:
        raise JsonFileError(where, f"nested deeper than {MAX_JSON_DEPTH} levels (the limit)")
    return obj


def regular_file(path: str | os.PathLike, where: str) -> Path:
    """``path`` if it is a regular file (not a FIFO, device or folder, which reading would
    hang on or fail); else a one-line SalunError naming ``where``."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise SalunError(f"{where} does not exist") from None
    if not stat.S_ISREG(mode):
        raise JsonFileError(where, "not a regular file")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The one reader of JSON files salun reads back: a regular file of at most
    :data:`MAX_JSON_BYTES`, UTF-8, valid JSON, nested at most :data:`MAX_JSON_DEPTH` deep.
    Every failure is a one-line SalunError naming ``what`` and the path."""
    where = f"{what} {str(path)!r}"
    path = regular_file(path, where)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise JsonFileError(where, f"{size} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise JsonFileError(where, f"unreadable: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonFileError(where, f"not valid JSON: not UTF-8 ({e.reason})") from None
    return parse_json(text, where)


def public_path(path: str | os.PathLike) -> str:
    """``path`` as the user will see it: a file inside a staged run folder
    (``.NAME.partial-*``, :func:`staged_folder`) is named by its place in ``NAME``."""
    parts = list(Path(path).parts)
    for i, part in enumerate(parts):
        if part.startswith(".") and ".partial-" in part:
            parts[i] = part[1:].rsplit(".partial-", 1)[0]
    return str(Path(*parts)) if parts else str(path)


def write_error(path: str | os.PathLike, e: BaseException) -> Exception:
    """The one-line SalunError for a failed write of ``path`` (full disk, read-only folder,
    safetensors' own error type); anything else is returned unchanged."""
    from safetensors import SafetensorError

    if isinstance(e, SalunError) or not isinstance(e, OSError | SafetensorError):
        return e if isinstance(e, Exception) else RuntimeError(str(e))
    where = public_path(path)
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return SalunError(f"no space left on device ({where}); free some space and run again")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else text.strip()
    return SalunError(f"cannot write {where}: {' '.join(reason.split())}")


@contextmanager
def write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write inside the block (OSError, SafetensorError) into one line naming
    ``path``; for writers that make their own files (diffusers ``save_pretrained``)."""
    try:
        yield
    except Exception as e:
        err = write_error(path, e)
        if err is e:
            raise
        raise err from None


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save a flat dict of tensors as safetensors, atomically: the one safetensors writer.

    A failed write (a full disk) is a one-line SalunError naming ``path``; the temporary file
    is removed and nothing appears under ``path``.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with write_errors(path), atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _dtype_kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_floating_point():
        return "floating-point"
    return "complex" if t.is_complex() else "integer"


def check_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights read from a file that do not fit the model's ``own`` state dict: other
    names, other shapes, another kind of dtype (float weights given as int or bool), or
    non-finite values. One line naming the tensor, what was found and what is expected."""

    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        raise SalunError(
            f"{where} does not match the model: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {bad[:3]}"
        )
    for k, want in own.items():
        got = state[k]
        if _dtype_kind(got) != _dtype_kind(want):
            raise SalunError(
                f"{where}: tensor {k!r} is {str(got.dtype).removeprefix('torch.')}; the model "
                f"expects {_dtype_kind(want)} ({str(want.dtype).removeprefix('torch.')})"
            )
    for k, v in state.items():
        if v.is_floating_point() and not bool(v.isfinite().all()):
            raise SalunError(
                f"{where} holds non-finite values (NaN or inf) in {k!r}; refusing to use it"
            )


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
