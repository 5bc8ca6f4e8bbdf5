"""Run records: run ids, write-once directories, checkpoints (docs/design.md §4)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import threading
from pathlib import Path

import pytest
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
    for status, finished in [("failed", False), ("diverged", True), ("completed", True)]:
        paths = RunPaths(tmp_path, "toy", f"{status:0>12}")
        assert records.read_record(paths) is None
        info = {"status": status}
        records.write_record(paths, config=OmegaConf.create({}), metrics=[], trace=[], info=info)
        assert (records.read_record(paths) is not None) is finished


@pytest.mark.parametrize("finished", ["completed", "diverged"])
def test_write_record_never_replaces_a_finished_record(tmp_path: Path, finished: str) -> None:
    paths = _paths(tmp_path)
    empty = OmegaConf.create({})
    records.write_record(paths, config=empty, metrics=[], trace=[], info={"status": "failed"})
    records.write_record(paths, config=empty, metrics=[], trace=[], info={"status": finished})
    for status in ("failed", "completed", "diverged"):
        with pytest.raises(FileExistsError, match=f"is {finished} already"):
            records.write_record(paths, config=empty, metrics=[], trace=[], info={"status": status})
    assert records.read_info(paths)["status"] == finished
    assert not (paths.experiment_dir / ".tmp").exists()


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


def test_run_lock_makes_a_second_holder_wait_and_names_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _paths(tmp_path)
    events: list[str] = []
    first_holds = threading.Event()
    release = threading.Event()

    def first() -> None:
        with records.run_lock(paths):
            events.append("first acquired")
            first_holds.set()
            release.wait(10)
            events.append("first releases")

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait(10)
    assert records.is_running(paths)
    # flock locks belong to open files, so a second open in this process waits like another process
    threading.Timer(0.5, release.set).start()
    with caplog.at_level(logging.WARNING), records.run_lock(paths, patience_s=0.1):
        events.append("second acquired")
        assert f"pid {os.getpid()} on" in paths.lock.read_text()
    thread.join()
    assert events == ["first acquired", "first releases", "second acquired"]
    (warning,) = [r.getMessage() for r in caplog.records if "being trained" in r.getMessage()]
    assert f"run {paths.run_id} is being trained by pid {os.getpid()} on" in warning
    assert not records.is_running(paths)


def test_is_running_is_false_without_a_lock_file(tmp_path: Path) -> None:
    assert not records.is_running(_paths(tmp_path))
