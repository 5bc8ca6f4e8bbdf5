"""Run records: run ids, write-once directories, checkpoints (docs/design.md §4)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from _toy_task import compose_config
from omegaconf import OmegaConf

from experiments.layout import RunPaths
from experiments.runner import records
from experiments.runner.diagnostics import TRACE_COLUMNS


def _paths(tmp_path: Path) -> RunPaths:
    return RunPaths(tmp_path, "toy", "0123456789ab")


def test_run_id_ignores_keys_that_do_not_change_the_result() -> None:
    base = compose_config("experiment=mnist_mlp")
    same = compose_config(
        "experiment=mnist_mlp",
        "results_dir=/elsewhere",
        "data_dir=/data",
        "device=cpu",
        "checkpoint=false",
        "logger=wandb",
    )
    assert records.run_id(base) == records.run_id(same)
    assert len(records.run_id(base)) == 12
    int(records.run_id(base), 16)  # hex


def test_run_id_changes_with_seed_lr_optimizer_and_profile() -> None:
    ids = {
        records.run_id(compose_config("experiment=mnist_mlp", *extra))
        for extra in [
            (),
            ("seed=1",),
            ("optimizer.lr=0.5",),
            ("optimizer=adam",),
            ("profile=smoke",),
        ]
    }
    assert len(ids) == 5


def test_write_record_writes_the_four_files_and_nulls_non_finite(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    cfg = OmegaConf.create({"experiment": "toy", "seed": 3})
    metrics = [{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": math.nan}]
    trace = [{"step": 1, "epoch": 1, "loss": 0.7, "lr": 1.0, "step_size": None}]
    info = {"status": "diverged", "final": metrics[-1]}
    where = records.write_record(paths, config=cfg, metrics=metrics, trace=trace, info=info)

    assert where == paths.record
    assert sorted(p.name for p in where.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "run.json",
        "trace.csv",
    ]
    rows = [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": None}]
    assert json.loads((where / "run.json").read_text())["final"]["train/loss"] is None
    with open(where / "trace.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == list(TRACE_COLUMNS)
    assert row["step_size"] == "" and row["adaptive_step"] == "" and row["loss"] == "0.7"
    assert OmegaConf.load(where / "config.yaml").seed == 3
    assert not (paths.experiment_dir / ".tmp").exists()  # the staging directory was renamed away


def test_read_record_returns_finished_records_only(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert records.read_record(paths) is None
    for status, finished in [("failed", False), ("diverged", True), ("completed", True)]:
        info = {"status": status}
        records.write_record(paths, config=OmegaConf.create({}), metrics=[], trace=[], info=info)
        assert (records.read_record(paths) is not None) is finished


def test_checkpoint_round_trip_and_removal(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert records.load_checkpoint(paths) is None
    records.save_checkpoint(paths, {"epoch": 1, "x": torch.arange(3)})
    records.save_checkpoint(paths, {"epoch": 2, "x": torch.arange(4)})  # replaces the first
    loaded = records.load_checkpoint(paths)
    assert loaded["epoch"] == 2 and torch.equal(loaded["x"], torch.arange(4))
    assert [p.name for p in paths.partial.iterdir()] == ["checkpoint.pt"]  # no temporary left
    records.remove_checkpoint(paths)
    assert records.load_checkpoint(paths) is None
    assert not (paths.experiment_dir / ".partial").exists()


def test_package_versions_names_torch() -> None:
    assert records.package_versions()["torch"] == torch.__version__.split("+")[0]
