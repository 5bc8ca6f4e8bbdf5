"""Fixtures of the experiments tests: task configs instantiated the way the runner does it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "task"


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., object]:
    """make_task(name, **overrides): the task of configs/task/<name>.yaml, built like the runner builds it.

    Defaults: synthetic stand-in data and an empty data directory; `overrides` replace any config field
    (e.g. batch_size=8).
    """

    def make(name: str, **overrides: object) -> object:
        cfg = OmegaConf.load(TASK_CONFIG_DIR / f"{name}.yaml")
        kwargs = {"data_dir": str(tmp_path / "data"), "synthetic": True}
        kwargs.update(overrides)
        return instantiate(cfg, **kwargs)

    return make
