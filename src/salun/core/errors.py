"""User-facing errors: one line, naming the bad value and the allowed ones.

The CLI turns any :class:`SalunError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SalunError(ValueError):
    """A bad input from the user (name, value, file). Message is one line."""


def unknown_choice(kind: str, value: object, allowed: Iterable[str]) -> SalunError:
    """Build the error for an unknown name, suggesting the closest allowed ones."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(value), allowed, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return SalunError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}.{hint}")


def require_extra(module: str, extra: str) -> None:
    """Fail with one line when an optional dependency (``pip install 'salun[extra]'``) is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SalunError(
            f"this needs the optional package {module!r}: pip install 'salun[{extra}]'"
        )
