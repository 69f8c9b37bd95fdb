"""Name -> object registries. Registry names are the project's vocabulary: config values,
``salun list`` output and the test matrix all come from here."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from salun.core.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects; unknown names fail with the closest suggestions."""

    def __init__(self, kind: str, source: str | tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # the packages whose import registers the entries
        self._sources: tuple[str, ...] = (source,) if isinstance(source, str) else source or ()

    def _load(self) -> None:
        """Import the package that registers the entries (plugin discovery, as entry points do:
        a module that only reads the table does not depend on the entries' code)."""
        sources, self._sources = self._sources, ()
        for source in sources:
            importlib.import_module(source)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: Any) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        """The registered names, sorted (``", ".join(MODELS)``, ``pytest.mark.parametrize``)."""
        return iter(self.names())


METHODS: Registry[type] = Registry("method", "salun.methods")


MODELS: Registry[Callable[..., Any]] = Registry("model", "salun.models")
"""Image classifiers: builder functions ``(num_classes, in_channels, image_size, width, mean,
std) -> nn.Module`` registered by :mod:`salun.models` (``@MODELS.register("name")``);
:func:`salun.models.build_model` looks the name up here."""


DATASETS: Registry[Any] = Registry("dataset", "salun.data.sources")
"""Image datasets read from local files: :class:`salun.data.datasets.DatasetSource` entries
registered by :mod:`salun.data.sources`; :func:`salun.data.load_dataset` looks the name up
here."""


TASKS: Registry[Any] = Registry("task", "salun.tasks")
"""Tasks (model families): classes implementing :class:`salun.tasks.base.Task`, registered by
the modules of :mod:`salun.tasks` (``@TASKS.register("name")``). The pipeline and the CLI find
a task here by the name in ``cfg.task`` and never branch on it."""


CONFIG_CHECKS: Registry[Callable[[Any], None]] = Registry(
    "config check", ("salun.bench.grid", "salun.methods", "salun.tasks")
)
"""Checks of a whole configuration that need a registered object (a method's parameters, a
task's section, a bench grid). :func:`salun.config.validate` runs them all; the packages that
own the objects register them, so the configuration module knows no methods or tasks."""
