"""Evaluation: the task pool (a backbone with each task's head on its eval split, the ensemble, the
cross-task matrix) and the reports. Importing this package does not import paddle."""
from ppmerge.evaluation.task_pool import TaskPool

__all__ = ["TaskPool"]
