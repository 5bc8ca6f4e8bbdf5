"""Fixtures of the runner's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An offline $WANDB_DIR of the test's own; wandb's process-wide settings (which keep the first
    $WANDB_DIR they saw) are torn down around the test."""
    import wandb

    directory = tmp_path / "wb"
    directory.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(directory))
    wandb.teardown()
    yield directory
    wandb.teardown()
