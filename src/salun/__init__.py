"""salun: machine unlearning with weight saliency (SalUn, Fan et al., ICLR 2024) and baselines.

The public names are imported on first use (PEP 562), so ``import salun`` and ``salun --help``
do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "evaluate": "salun.api",
    "unlearn": "salun.api",
    "get_method": "salun.methods",
    "list_methods": "salun.methods",
    "SaliencyMask": "salun.methods.saliency",
    "compute_saliency_mask": "salun.api",
}

__all__ = [
    "SaliencyMask",
    "compute_saliency_mask",
    "evaluate",
    "get_method",
    "list_methods",
    "unlearn",
]

if TYPE_CHECKING:
    from salun.api import compute_saliency_mask, evaluate, unlearn
    from salun.methods import get_method, list_methods
    from salun.methods.saliency import SaliencyMask


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'salun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
