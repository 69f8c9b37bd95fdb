"""Type and range checks of user-given values, driven by dataclass annotations.

Config sections and method hyperparameters are dataclasses; :func:`check_value` checks a value
read from YAML or a ``key=value`` override against a field's annotation (``int``, ``float``,
``bool``, ``str``, ``X | None``, unions, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``,
``Any``) and returns it in the field's type, or raises a one-line :class:`SalunError` naming the
field, the bad value and what is allowed. Non-finite numbers (NaN, inf) are refused everywhere:
a NaN learning rate otherwise "forgets perfectly" (UA 100) by destroying the model.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from salun.core.errors import SalunError
from salun.core.limits import FIELD_RANGES, MAX_INT, show_number

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(tp: Any) -> str:
    """Human words for an annotation, e.g. ``int | None`` -> 'an integer or null'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


class OutOfRange(SalunError):
    """A number of the right type but out of range (NaN, inf, an integer beyond ``MAX_INT``):
    reported as such, not as 'must be X or Y', when a union tries its other types."""


def check_finite(value: Any, where: str) -> Any:
    """Refuse NaN and infinities anywhere inside ``value`` (numbers, lists, mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OutOfRange(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise OutOfRange(
            f"{where} must be a finite number within +-{MAX_INT}, got {show_number(value)}"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")
    return value


def check_int_range(value: int, where: str) -> int:
    """Refuse an integer beyond what torch and numpy hold (``MAX_INT``, in salun.core.limits)."""
    if abs(value) > MAX_INT:
        low, high = FIELD_RANGES.get(where, (-MAX_INT, MAX_INT))
        raise OutOfRange(f"{where} must be an integer in {low}..{high}, got {show_number(value)}")
    return value


def check_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (and converted: 3 -> 3.0 for floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return check_finite(value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except OutOfRange:
                raise
            except SalunError:
                pass
        raise SalunError(f"{where} must be {describe(tp)}, got {show_number(value)}")
    if tp is type(None):
        if value is not None:
            raise SalunError(f"{where} must be null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise SalunError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SalunError(f"{where} must be an integer, got {show_number(value)}")
        return check_int_range(value, where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                value = float(value)
            except ValueError:
                raise SalunError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SalunError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer of over 308 digits
            raise OutOfRange(f"{where} must be a finite number, got {show_number(value)}") from None
        return check_finite(number, where)
    if tp is str:
        if not isinstance(value, str):
            raise SalunError(f"{where} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SalunError(f"{where} must be {describe(tp)}, got {value!r}")
        items = [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SalunError(f"{where} must be a mapping, got {value!r}")
        return {
            k: check_value(v, args[1] if len(args) == 2 else Any, f"{where}.{k}")
            for k, v in value.items()
        }
    return check_finite(value, where)  # other annotations (e.g. a nested dataclass): as given


def check_int(value: Any, where: str, low: int, high: int | None = None) -> int:
    """An integer argument in ``low..high`` (bools and floats refused), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int):
        check_value(value, int, where)  # the type's one-line error
    assert isinstance(value, int)
    if value < low or (high is not None and value > high):  # this argument's range, not int64's
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise SalunError(f"{where} must be an integer {allowed}, got {show_number(value)}")
    return value


def first_non_finite(tensors: typing.Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (None: all finite).

    One check for weights wherever they come from (a state dict, a file, an unlearned model):
    a model with NaN weights otherwise "forgets perfectly" (UA 100)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            return name
    return None


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (empty mapping when they cannot resolve)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a forward reference only importable under TYPE_CHECKING
        return {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
