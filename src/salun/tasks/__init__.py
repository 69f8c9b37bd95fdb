"""Tasks: the seam between unlearning methods and model families.

Every task implements the :class:`~salun.tasks.base.Task` protocol and registers itself in
:data:`salun.registry.TASKS`; importing this package registers the built-in ones
(``classification``, ``ddpm``, ``text_to_image``). See ``docs/adding-a-task.md``.
"""

from typing import Any

from salun.registry import CONFIG_CHECKS, TASKS
from salun.tasks.base import Task
from salun.tasks.classification import ClassificationTask
from salun.tasks.spec_classification import Classification
from salun.tasks.spec_ddpm import Diffusion
from salun.tasks.t2i_pipeline import TextToImage


@CONFIG_CHECKS.register("task")
def check_task_config(cfg: Any) -> None:
    """The task's own section of a configuration (one-line errors)."""
    TASKS.get(cfg.task).check_config(cfg)


def get_task(name: str) -> Any:
    """The registered task class ``name`` (one-line error naming the registered ones)."""
    return TASKS.get(name)


__all__ = [
    "Classification",
    "ClassificationTask",
    "Diffusion",
    "Task",
    "TextToImage",
    "get_task",
]
