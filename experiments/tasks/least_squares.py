"""Linear least squares with a known optimum: the synthetic_ls experiment (docs/experiments.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from experiments.runner.distributed import DistContext
from experiments.tasks.base import Task, check_split, epoch_batches, seeded_model

Batch = tuple[torch.Tensor, torch.Tensor]


def make_least_squares(
    n_samples: int, n_features: int, seed: int, oracle_seed: int, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A regression problem (A, b) with b = A w* + noise, w* of unit norm fixed by `oracle_seed`.

    The distribution of the paper's runner (step-back `get_synthetic_linear`, regression): shifted Gaussian
    features with random column scales, about 30 log(n) / n of the entries kept, columns rescaled to norm 10.
    With its seeds (train 1234567, oracle 12345678) this draws the paper's problem.
    """
    w = np.random.RandomState(oracle_seed).randn(n_features)
    w /= np.linalg.norm(w)
    rng = np.random.RandomState(seed)
    a = rng.randn(n_samples, n_features) + 1.0
    a = a @ np.diag(10.0 * rng.randn(n_features))
    a = a * (rng.rand(n_samples, n_features) < 30.0 * np.log(n_samples) / n_samples)
    a = 10.0 * a / np.linalg.norm(a, axis=0).clip(min=1e-6)
    b = a @ w + noise * rng.randn(n_samples)
    return a.astype(np.float32), b.astype(np.float32)


@dataclass(kw_only=True)
class LeastSquares(Task):
    """min_w 1/n sum_i (a_i^T w - b_i)^2 over a generated problem (mean squared error, no 1/2).

    Noise-free by default, so the optimum is f_* = 0 (interpolation): `optimal_value` holds f_* of the
    training problem (0, or the least-squares residual when `noise > 0`). The score is the mean squared error
    of the split (`score_name = "mse"`, lower is better); on noise-free data it is the suboptimality
    f(w) - f_*. The validation set is a second draw with the same w*.

    The data are generated the same way whatever the runner asks: `data_dir` is ignored, and `synthetic` only
    marks the record (`data_info["synthetic"]` echoes it, so smoke runs say they are smoke runs).
    """

    score_name = "mse"
    higher_is_better = False
    batchable = True

    model: Callable[[], torch.nn.Module]
    n_samples: int = 200
    n_features: int = 10
    noise: float = 0.0
    batch_size: int = 20
    eval_batch_size: int = 1024
    data_seed: int = 1234567
    val_seed: int = 456789
    oracle_seed: int = 12345678
    drop_last: bool = True
    optimal_value: float = field(default=0.0, init=False)
    _splits: dict[str, Batch] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("batch_size", "eval_batch_size")

    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
        self._device = torch.device(device)
        for split, seed in (("train", self.data_seed), ("val", self.val_seed)):
            a, b = make_least_squares(
                self.n_samples, self.n_features, seed, self.oracle_seed, self.noise
            )
            self._splits[split] = (torch.from_numpy(a).to(device), torch.from_numpy(b).to(device))
        a, b = (t.double() for t in self._splits["train"])
        residual = a @ torch.linalg.lstsq(a, b).solution - b
        self.optimal_value = float(residual.square().mean()) if self.noise > 0 else 0.0

    @property
    def data_info(self) -> dict:
        self._loaded()
        return {
            "dataset": f"least_squares(n={self.n_samples}, p={self.n_features}, noise={self.noise})",
            "source": f"generated (seeds data={self.data_seed}, oracle={self.oracle_seed})",
            "synthetic": self.synthetic,
            "n_train": self.n_samples,
            "n_val": self.n_samples,
        }

    def build_model(self) -> torch.nn.Module:
        return seeded_model(self.model, self.model_seed).to(self._device)

    def batches_per_epoch(self) -> int:
        return epoch_batches(self.n_samples, self.batch_size, self.drop_last)

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        a, b = self._loaded()["train"]
        order = torch.randperm(self.n_samples, generator=generator, device=generator.device)
        order = order.to(self._device)
        for i in range(self.batches_per_epoch()):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield a[index], b[index]

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        a, b = batch
        return F.mse_loss(model(a).flatten(), b)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        a, b = self._loaded()[check_split(split)]
        size = self.eval_batch_size
        return ((a[i : i + size], b[i : i + size]) for i in range(0, self.n_samples, size))

    def eval_sums(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        a, b = batch
        squared_error = F.mse_loss(model(a).flatten(), b, reduction="sum")
        count = torch.full((), b.shape[0], device=b.device)
        return {"loss": squared_error, "score": squared_error, "count": count}

    def _loaded(self) -> dict[str, Batch]:
        if not self._splits:
            raise RuntimeError("Call setup(device) before using the task's data")
        return self._splits
