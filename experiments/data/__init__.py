"""Datasets as tensors and arrays: images (experiments.data.images) and Criteo (experiments.data.criteo).

A dataset that is not on disk raises `DatasetNotFoundError`, which names the dataset, every path looked at
and how to get it. A hint may write `<experiment>` where the command needs the experiment id: the runner,
which knows it, fills it in (`DatasetNotFoundError.experiment`).
"""

from __future__ import annotations

EXPERIMENT_PLACEHOLDER = "<experiment>"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message names it, every path looked at and how to get it."""

    def __init__(self, dataset: str, paths: list[str], how_to_get: str) -> None:
        super().__init__(dataset)
        self.dataset = dataset
        self.paths = list(paths)
        self.how_to_get = how_to_get
        self.experiment: str | None = None  # set by the runner: fills in the hint's placeholder

    def __str__(self) -> str:
        how = self.how_to_get
        if self.experiment is not None:
            how = how.replace(EXPERIMENT_PLACEHOLDER, self.experiment)
        looked = "\n".join(f"  {p}" for p in self.paths)
        return f"Dataset {self.dataset!r} not found. Looked at:\n{looked}\nTo get it: {how}"
