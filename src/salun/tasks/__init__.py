"""Tasks: the seam between unlearning methods and model families.

Every task implements the :class:`~salun.tasks.base.Task` protocol and registers itself in
:data:`salun.core.registry.TASKS`; importing this package registers the built-in ones
(``classification``, ``ddpm``, ``text_to_image``). See ``docs/adding-a-task.md``.
"""

from typing import Any

from salun.core.registry import CONFIG_CHECKS, TASKS
from salun.tasks.base import Task
from salun.tasks.classification.classification_objective import ClassificationTask
from salun.tasks.classification.classification_task import Classification
from salun.tasks.ddpm.ddpm_task import Diffusion
from salun.tasks.text_to_image.text_to_image_task import TextToImage


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
