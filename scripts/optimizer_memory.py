"""Optimizer memory: the bytes each optimizer keeps per parameter, measured after one step.

Builds each optimizer config of configs/optimizer/ (and its averager, DoG's) as the runner does, on a
model of an experiment's task (default: fashion_mnist_mlp's MLP, 89,610 parameters, on synthetic
stand-in data), takes one optimizer step through the training loop's protocol and prints what
experiments.runner.peers.state_bytes counts: the optimizer's state, the tensors in its param groups
and the averager's model, beyond the parameters and their gradients. Markdown, one row per optimizer.

    python scripts/optimizer_memory.py [--experiment fashion_mnist_mlp] [optimizer ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.layout import CONFIG_DIR
from experiments.runner import peers, train
from experiments.runner.distributed import DistContext

DEFAULT = [
    "sgd_m", "adam", "momo", "momo_star", "momo_adam", "momo_adam_star", "prodigy", "dadapt_adam",
    "dadapt_sgd", "sf_adamw", "sf_sgd", "dog", "dowg",
]  # fmt: skip


def measure(experiment: str, name: str) -> tuple[int, int]:
    """(state bytes, parameters) of optimizer config `name` after one step on `experiment`'s model."""
    overrides = [f"experiment={experiment}", f"optimizer={name}", "profile=smoke"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run = train.build_run(cfg, DistContext())
    peers.train_mode(run.optimizer, run.model)
    batch = next(itertools.islice(run.task.train_batches(run.generator), 1))

    def closure() -> torch.Tensor:
        run.optimizer.zero_grad(set_to_none=True)
        loss = run.task.loss(run.model, batch)
        loss.backward()
        return loss

    run.optimizer.step(closure)
    peers.after_step(run.averager)
    n = sum(p.numel() for p in run.model.parameters())
    return peers.state_bytes(run.optimizer, run.averager), n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("optimizers", nargs="*", default=DEFAULT, help="configs/optimizer/ names")
    parser.add_argument("--experiment", default="fashion_mnist_mlp")
    args = parser.parse_args()
    print("| optimizer | bytes per parameter | fp32 copies of the parameters | state bytes |")
    print("|---|---:|---:|---:|")
    for name in args.optimizers:
        size, n = measure(args.experiment, name)
        print(f"| {name} | {size / n:.2f} | {size / n / 4:.2f} | {size:,} |")
    print(f"\n({args.experiment}'s model: {n:,} parameters, fp32)")


if __name__ == "__main__":
    main()
