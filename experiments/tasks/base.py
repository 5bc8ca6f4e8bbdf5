"""The contract between a task and the runner (docs/design.md §2).

A task owns its data, model, loss and metric and knows nothing of optimizers or of the training loop. The
runner asks it for a model, for one epoch of training batches, for the loss of a batch and for the
evaluation batches of a split; the runner caps the number of batches (smoke profiles), switches the model
between train and eval mode, turns gradients off for evaluation, and adds up the per-batch sums that the
task returns (experiments.runner.loop).

Tasks are keyword-only dataclasses: their fields are their config (configs/task/<name>.yaml), plus the two
that the runner passes (`data_dir`, `synthetic`: where the data come from). The device and the
data-parallel context are passed to `setup`, the run's randomness as a generator to `train_batches`; a
task never reads global state.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from experiments.runner.distributed import DistContext

# the fixed model-initialisation seed of the paper's runner (step-back `Base.seed`)
PAPER_MODEL_SEED = 1234567
SPLITS = ("train", "val")


def seeded_model(factory: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """`factory()` with the global RNG seeded by `seed`, restored afterwards: every run starts from the
    same model, and the model seed does not leak into the run's own randomness (dropout, data order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def epoch_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """How many batches of `batch_size` an epoch over `n` samples has."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split: {split!r}; use 'train' or 'val'")
    return split


@dataclass(kw_only=True)
class Task(abc.ABC):
    """Data + model + loss + metric of one experiment.

    The runner calls, in order: `setup(device, dist)` once, `build_model()` once, then per epoch
    `train_batches(generator)` (at most `max_train_batches` of them) with `loss(model, batch)` per batch,
    and an evaluation of "train" and "val".

    Evaluation, by default, is a sum over batches: for each of at most `max_eval_batches` batches of
    `eval_batches(split)`, `eval_sums(model, batch)` returns 0-dim tensor sums (the summed loss, the
    number correct, ...) and "count", the number they are averaged over; the runner adds them up over the
    batches and the ranks and divides by the count. `eval_sums` is a pure function of the model and the
    batch (no host sync, no `.item()`), so that it can run on several models at once (torch.func.vmap).
    A task whose metric is not an average over examples (an AUC) sets `eval_by_sums = False` and
    implements `evaluate(model, batches)` over the whole (capped) split instead.
    """

    score_name: ClassVar[str] = "acc"  # what "score" means for this task: acc, auc, bleu, mse ...
    higher_is_better: ClassVar[bool] = True
    # True when train_batches already yields this rank's share of each batch under torchrun (a task
    # that decodes images in DataLoader workers reads only its own); the loop then does not split it.
    shards_batches: ClassVar[bool] = False
    eval_by_sums: ClassVar[bool] = True
    # True when the runs of a sweep that differ only in their optimizer may train as one batched group
    # (experiments/runner/group.py): the loss and `eval_sums` are pure functions of the model and the
    # batch that torch.func.vmap can run, and the batches depend on the run's generator alone.
    batchable: ClassVar[bool] = False

    data_dir: Path = Path("data")  # from the runner: where datasets are looked for
    synthetic: bool = False  # from the runner: stand-in data of the dataset's shapes, nothing read
    model_seed: int = PAPER_MODEL_SEED  # every run starts from the model this seed initialises
    _device: torch.device = field(default=torch.device("cpu"), init=False, repr=False)  # setup's

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()

    def check_positive(self, *fields: str) -> None:
        """Raise ValueError naming the first of `fields` (sizes, counts) that is below 1."""
        for name in fields:
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid {name}: {getattr(self, name)} (must be >= 1)")

    @abc.abstractmethod
    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
        """Load the data onto `device`; may raise experiments.data.DatasetNotFoundError. `dist` says
        which rank of how many this process is (one of one without torchrun)."""

    @property
    @abc.abstractmethod
    def data_info(self) -> dict:
        """{"dataset", "source", "synthetic": bool, "n_train", "n_val"} of the loaded data."""

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The model on the task's device, initialised from the task's fixed `model_seed`."""

    @abc.abstractmethod
    def batches_per_epoch(self) -> int:
        """How many batches `train_batches` yields (a whole epoch; the runner may stop earlier)."""

    @abc.abstractmethod
    def train_batches(self, generator: torch.Generator) -> Iterator[Any]:
        """One epoch of training batches, shuffled with `generator`, incomplete last batch dropped."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of one batch (0-dim tensor)."""

    @abc.abstractmethod
    def eval_batches(self, split: str) -> Iterator[Any]:
        """The evaluation batches of `split` ("train" or "val") in a fixed order; this rank's share."""

    def eval_sums(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """0-dim sums over one evaluation batch: "loss", "score", any extra metric, and "count"."""
        raise NotImplementedError(
            f"{type(self).__name__} evaluates whole splits (eval_by_sums=False)"
        )

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """{"loss", "score", extras} over `batches` (of eval_batches): for eval_by_sums = False."""
        raise NotImplementedError(f"{type(self).__name__} evaluates by sums (eval_by_sums=True)")

    def on_train_end(self, model: torch.nn.Module, run_dir: Path) -> None:  # noqa: B027
        """Artefacts of a completed run (a grid of samples, say), written into `run_dir` before the
        record is published; `model` is in eval mode. Most tasks have none."""
