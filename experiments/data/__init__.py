"""Datasets as tensors and arrays: images (experiments.data.images) and Criteo (experiments.data.criteo).

A dataset that is not on disk raises `DatasetNotFoundError`, which names the dataset, every path looked at
and how to get it.
"""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message names it, every path looked at and how to get it."""

    def __init__(self, dataset: str, paths: list[str], how_to_get: str) -> None:
        self.dataset = dataset
        self.paths = list(paths)
        self.how_to_get = how_to_get
        looked = "\n".join(f"  {p}" for p in self.paths)
        super().__init__(
            f"Dataset {dataset!r} not found. Looked at:\n{looked}\nTo get it: {how_to_get}"
        )
