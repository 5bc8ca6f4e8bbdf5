"""A task small enough for the runner's tests: 10-feature, 3-class logistic regression with dropout.

The dropout draws from the global RNG and the batches from the data generator, so a resume that
forgets either RNG state shows up as a metric difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.runner import loop
from experiments.runner.distributed import DistContext
from experiments.tasks.base import Task


@dataclass(kw_only=True)
class ToyTask(Task):
    batch_size: int = 16
    n_train: int = 128
    n_val: int = 64
    dropout: float = 0.2
    fail_at_step: int | None = None
    nan_at_step: int | None = None
    steps: int = field(default=0, init=False)

    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(10, 3, generator=g)
        x = torch.randn(self.n_train + self.n_val, 10, generator=g)
        y = (x @ w).argmax(dim=1)
        self.device = device
        self.x_train, self.y_train = x[: self.n_train].to(device), y[: self.n_train].to(device)
        self.x_val, self.y_val = x[self.n_train :].to(device), y[self.n_train :].to(device)

    @property
    def data_info(self) -> dict:
        source = "synthetic" if self.synthetic else "toy"
        return {"dataset": "toy", "source": source, "synthetic": self.synthetic,
                "n_train": self.n_train, "n_val": self.n_val}  # fmt: skip

    def build_model(self) -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Linear(10, 16), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(16, 3)
        )

    def batches_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    def train_batches(
        self, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.n_train, generator=generator).to(self.device)
        for i in range(self.batches_per_epoch()):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise RuntimeError("injected failure")
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        return loss * float("nan") if self.steps == self.nan_at_step else loss

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        return iter([(x[: len(x) // 2], y[: len(x) // 2]), (x[len(x) // 2 :], y[len(x) // 2 :])])

    def eval_sums(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
        x, y = batch
        logits = model(x)
        return {
            "loss": nn.functional.cross_entropy(logits, y, reduction="sum"),
            "score": (logits.argmax(dim=1) == y).sum(),
            "count": torch.full((), len(y)),
        }


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(*overrides: str) -> DictConfig:
    """configs/train.yaml composed with `overrides`, through Hydra's compose API."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def toy_config(results_dir: Path, *overrides: str, **task: object) -> DictConfig:
    """A run of ToyTask (keyword arguments `task`) with the runner's real config otherwise."""
    cfg = compose_config(
        "experiment=mnist_mlp", "epochs=2", f"results_dir={results_dir}", *overrides
    )
    cfg.experiment = "toy"
    cfg.task = OmegaConf.create({"_target_": f"{__name__}.ToyTask", **task})
    return cfg


def evaluate(task: Task, model: nn.Module, split: str, max_batches: int | None = None) -> dict:
    """A task's metrics on `split` as the runner computes them: eval mode, no gradients, the loop's sums."""
    model.eval()
    with torch.no_grad():
        return loop.evaluate_split(task, model, split, max_batches)
