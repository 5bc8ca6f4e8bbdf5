"""Tasks: data + model + loss + metric of each experiment (docs/design.md §2).

The task classes live in `experiments.tasks.classification` and `experiments.tasks.least_squares`; configs
name them by their full path. This package exports only the contract, so that `experiments.data` can raise
`DatasetNotFoundError` without importing the tasks that use it.
"""

from experiments.tasks.base import PAPER_MODEL_SEED, DatasetNotFoundError, Task

__all__ = ["PAPER_MODEL_SEED", "DatasetNotFoundError", "Task"]
