"""The contract between a task and the training loop (docs/design.md §2).

A task owns its data, model, loss and metric and knows nothing of optimizers: the loop asks it for a model,
for one epoch of batches, for the loss of a batch and for an evaluation of a split.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# the fixed model-initialisation seed of the paper's runner (step-back `Base.seed`)
PAPER_MODEL_SEED = 1234567


def capped(full: int, limit: int | None) -> int:
    """`full` batches, or at most `limit` of them (the smoke profile's max_train_batches)."""
    return full if limit is None else min(full, limit)


def seeded_model(factory: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """`factory()` with the global RNG seeded by `seed`, restored afterwards: every run starts from the
    same model, and the model seed does not leak into the run's own randomness (dropout, data order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class Task(abc.ABC):
    """Data + model + loss + metric of one experiment.

    The loop calls, in order: `setup(device)` once, `build_model()` once, then per epoch
    `train_batches(generator)` with `loss(model, batch)` per batch, and `evaluate(model, split)` for
    "train" and "val".
    """

    score_name: str = "acc"
    higher_is_better: bool = True
    # True when train_batches already yields this rank's share of each batch under torchrun (a task
    # that decodes images in DataLoader workers reads only its own); the loop then does not split it.
    shards_batches: bool = False

    @abc.abstractmethod
    def setup(self, device: torch.device) -> None:
        """Load the data onto `device`; may raise DatasetNotFoundError."""

    @property
    @abc.abstractmethod
    def data_info(self) -> dict:
        """{"dataset", "source", "synthetic": bool, "n_train", "n_val"} of the loaded data."""

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The model on the task's device, initialised from the task's fixed `model_seed`."""

    @abc.abstractmethod
    def train_batches(self, generator: torch.Generator) -> Iterator[Any]:
        """One epoch of training batches, shuffled with `generator`, incomplete last batch dropped."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of one batch (0-dim tensor)."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        """{"loss": mean loss, "score": metric} over `split` ("train" or "val"), eval mode, no grad."""

    @abc.abstractmethod
    def batches_per_epoch(self) -> int:
        """How many batches `train_batches` yields."""

    def on_train_end(self, model: torch.nn.Module, run_dir: Path) -> None:  # noqa: B027
        """Artefacts of a completed run (a grid of samples, say), written into `run_dir` before the
        record is published. Most tasks have none."""
