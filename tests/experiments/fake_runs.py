"""Run directories in the record format of docs/design.md §4, made up without training.

The aggregate and plot tests build their inputs with this, so that they do not depend on the runner.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import yaml

OPTIMIZERS = {
    "momo": {"_target_": "momo.Momo", "beta": 0.9, "bias_correction": False, "lb": 0.0},
    "momo_adam": {"_target_": "momo.MomoAdam", "betas": [0.9, 0.999], "lb": 0.0},
    "sgd_m": {"_target_": "torch.optim.SGD", "momentum": 0.9, "dampening": 0.9},
    "adam": {"_target_": "torch.optim.Adam", "betas": [0.9, 0.999]},
}


def fake_score(optimizer: str, lr: float, seed: int, epoch: int, epochs: int) -> float:
    """A val accuracy that peaks at lr = 1e-1 (1e-3 for Adam types), rising over epochs."""
    centre = -3.0 if "adam" in optimizer else -1.0
    width = 2.5 if optimizer.startswith("momo") else 1.0
    peak = 0.95 - 0.05 * ((math.log10(lr) - centre) / width) ** 2
    return max(0.1, peak * (1.0 - 0.5 ** (epoch + 1)) + 0.002 * (seed - 1))


def write_run(
    root: Path,
    experiment: str,
    optimizer: str,
    lr: float,
    seed: int,
    *,
    epochs: int = 3,
    status: str = "completed",
    steps_per_epoch: int = 4,
    extra: dict | None = None,
) -> Path:
    """Write one finished run directory under root/runs/<experiment>/ and return it."""
    opt_cfg = {
        "_partial_": True,
        "name": optimizer,
        "lr": lr,
        **OPTIMIZERS[optimizer],
        **(extra or {}),
    }
    config = {
        "seed": seed,
        "epochs": epochs,
        "device": "cpu",
        "results_dir": str(root),
        "task": {"_target_": "experiments.tasks.FakeTask", "batch_size": 128},
        "optimizer": opt_cfg,
        "schedule": {"_target_": "torch.optim.lr_scheduler.ConstantLR", "_partial_": True},
        "profile": {"name": "smoke"},
    }
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = root / "runs" / experiment / run_id
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))

    n_epochs = epochs if status == "completed" else (1 if status == "diverged" else 0)
    lines, trace = [], ["step,epoch,loss,lr,step_size,adaptive_step,lb_estimate"]
    for epoch in range(n_epochs):
        score = fake_score(optimizer, lr, seed, epoch, epochs)
        loss = float("nan") if status == "diverged" else 2.0 * (1.0 - score)
        lines.append(
            json.dumps(
                {
                    "epoch": epoch,
                    "train/loss": loss,
                    "train/score": score,
                    "val/loss": loss * 1.1,
                    "val/score": score,
                    "lr": lr,
                    "time_s": 0.1,
                }
            )
        )
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i + 1
            t1 = 0.5 / (1 + 0.1 * step) if optimizer.startswith("momo") else ""
            size = min(lr, t1) if t1 != "" else lr
            trace.append(f"{step},{epoch},{loss},{lr},{size},{t1},")
    (path / "metrics.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    (path / "trace.csv").write_text("\n".join(trace) + "\n")
    final = json.loads(lines[-1]) if lines else {}
    run = {
        "run_id": run_id,
        "experiment": experiment,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "status": status,
        "epochs_done": n_epochs,
        "final": final,
        "score_name": "acc",
        "higher_is_better": True,
        "wall_time_s": 1.0,
        "git_commit": "0" * 40,
        "versions": {},
        "device": "cpu",
        "data": {"dataset": "fake", "synthetic": True, "n_train": 10, "n_val": 10},
        "profile": "smoke",
        "error": "Traceback: boom" if status == "failed" else None,
    }
    (path / "run.json").write_text(json.dumps(run))
    return path


def write_sweep(
    root: Path,
    experiment: str = "fake_exp",
    grids: dict[str, list[float]] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    diverged: set[tuple[str, float]] = frozenset(),
    failed: set[tuple[str, float, int]] = frozenset(),
) -> None:
    """A whole sweep of fake runs; `diverged` settings diverge for every seed."""
    grids = grids or {"momo": [1e-3, 1e-2, 1e-1, 1.0, 10.0], "adam": [1e-4, 1e-3, 1e-2, 1e-1]}
    for optimizer, lrs in grids.items():
        for lr in lrs:
            for seed in seeds:
                status = "completed"
                if (optimizer, lr) in diverged:
                    status = "diverged"
                elif (optimizer, lr, seed) in failed:
                    status = "failed"
                write_run(root, experiment, optimizer, lr, seed, status=status)
