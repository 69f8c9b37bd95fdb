"""Name -> object registries. Registry names are the project's vocabulary: config values,
``salun list`` output and the test matrix all come from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from salun.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects; unknown names fail with the closest suggestions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: Any) -> bool:
        return name in self._items


METHODS: Registry[type] = Registry("method")
