"""Stands for a workload with its own trainer (docs/design.md §5): `check` refuses what it cannot run
before anything is written, `run` writes the run record and returns its run.json."""

from __future__ import annotations

from omegaconf import DictConfig

from experiments.runner import records


def check(cfg: DictConfig) -> None:
    if cfg.optimizer.name != "sgd_m":
        raise ValueError(
            f"Optimizer {cfg.optimizer.name!r} has no toy-workload counterpart (sgd_m)"
        )


def run(cfg: DictConfig) -> dict:
    info = {"status": "completed", "run_id": records.run_id(cfg), "runner": "toy"}
    records.write_record(records.run_paths(cfg), config=cfg, metrics=[], trace=[], info=info)
    return info
