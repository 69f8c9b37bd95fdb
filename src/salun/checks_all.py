"""Registers the configuration checks of every package (imported by the ``CONFIG_CHECKS``
registry on first use, see :mod:`salun.registry`)."""

from __future__ import annotations

import salun.bench.grid  # noqa: F401  (registers "bench")
import salun.methods  # noqa: F401  (registers "method")
import salun.tasks  # noqa: F401  (registers "task")
