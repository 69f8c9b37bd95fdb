"""Model folders never run their own code.

transformers runs Python files shipped in a model folder when a config names them in ``auto_map``
(with ``trust_remote_code=True``, or after an interactive "y"); diffusers does the same for a
``model_index.json`` whose ``_class_name`` is ``[module, class]`` or whose component comes from a
module file in the folder. salun passes ``trust_remote_code=False`` to every ``from_pretrained``
(``tests/test_no_code_from_files.py`` checks the sources), and :func:`refuse_custom_code` refuses
such a folder with one line before any library reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from salun.core.errors import SalunError

#: configs larger than this are refused unread (real ones are kilobytes)
MAX_CONFIG_BYTES = 16 << 20
#: component libraries a diffusers pipeline may name besides diffusers' own pipeline modules
LIBRARIES = ("diffusers", "transformers")

_NEVER = "salun never runs code from a model folder"


def _configs(folder: Path) -> list[Path]:
    """The JSON configs transformers and diffusers read: in the folder and its subfolders."""
    found = [*folder.glob("*.json"), *folder.glob("*/*.json")]
    return sorted(
        p for p in found if p.name.endswith("config.json") or p.name == "model_index.json"
    )


def _read(path: Path, folder: Path, what: str) -> Any:
    if not path.is_file():  # a FIFO or a device is never opened
        return None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise SalunError(
            f"{what} {str(folder)!r}: {path.relative_to(folder).as_posix()} is over "
            f"{MAX_CONFIG_BYTES >> 20} MiB; a model config is a small JSON file"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # not this check's business: the loader reports a corrupt config


def refuse_custom_code(folder: str | Path, what: str, diffusers: bool = False) -> None:
    """One-line :class:`SalunError` when a config in ``folder`` asks for code from the folder.

    Refused: an ``auto_map`` at any depth of any ``*config.json`` / ``model_index.json`` (in the
    folder or one folder down). With ``diffusers=True`` also a ``_class_name`` that is not a class of the
    installed diffusers, and a ``model_index.json`` component whose library is not diffusers,
    transformers or one of diffusers' pipeline modules.
    """
    folder = Path(folder)
    for path in _configs(folder):
        data = _read(path, folder, what)
        if not isinstance(data, dict):
            continue
        rel = path.relative_to(folder).as_posix()
        if _has_key(data, "auto_map"):
            raise SalunError(
                f"{what} {str(folder)!r} asks to run its own code ({rel} has an 'auto_map'); "
                f"{_NEVER}"
            )
        if diffusers:
            _check_diffusers_config(data, rel, folder, what)


def _has_key(data: Any, key: str) -> bool:
    """Whether any object nested in ``data`` has ``key`` (sub-configs carry their own, e.g. the
    ``image_processor`` section of ``processor_config.json``); iterative, so depth is no limit."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _check_diffusers_config(data: dict[str, Any], rel: str, folder: Path, what: str) -> None:
    import diffusers

    name = data.get("_class_name")
    if name is not None and not (
        isinstance(name, str) and isinstance(getattr(diffusers, name, None), type)
    ):
        raise SalunError(
            f"{what} {str(folder)!r}: {rel} names the class {name!r}, which is not a diffusers "
            f"class; {_NEVER}"
        )
    if not rel.endswith("model_index.json"):
        return
    for key, value in data.items():
        if key.startswith("_") or not isinstance(value, list | tuple) or not value:
            continue
        lib = value[0]
        if lib is None or lib in LIBRARIES:
            continue
        if not isinstance(lib, str) or not lib.isidentifier() or not _pipeline_module(lib):
            raise SalunError(
                f"{what} {str(folder)!r}: model_index.json takes {key!r} from {lib!r}, not from "
                f"{' or '.join(LIBRARIES)}; {_NEVER}"
            )


def _pipeline_module(name: str) -> bool:
    """Whether ``name`` is one of diffusers' pipeline modules (e.g. ``stable_diffusion``)."""
    import diffusers.pipelines

    try:
        return getattr(diffusers.pipelines, name, None) is not None
    except Exception:  # a lazy module that fails to import is not a usable library either
        return False
