"""Tasks: the seam between unlearning methods and model families."""

from salun.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask"]
