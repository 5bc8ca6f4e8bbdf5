"""Weights & Biases, offline: one W&B run per record (identity, grouping, resume, the trace).

The offline runs' transaction logs are read back (wandb_records.py), so the tests assert what W&B would
show: the run's id, group, job type, name, tags and config, and each logged row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest
from _toy_task import toy_config
from wandb_records import offline_runs

from experiments.runner import identity, loggers, records, train

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[3]


def test_wandb_run_is_the_records_run(tmp_path: Path, wandb_dir: Path) -> None:
    cfg = toy_config(tmp_path / "results", "logger=wandb", "optimizer=momo", "epochs=3")
    info = train.train(cfg)
    (run,) = offline_runs(wandb_dir)
    assert run.run_id == info["run_id"] == identity.run_id(cfg)
    assert (run.group, run.job_type, run.name) == ("toy-default-single", "momo", "momo lr=1 seed=0")
    assert run.tags == ["profile:default", "real-data", "toy"]
    assert run.config["run_id"] == info["run_id"] and run.config["optimizer"]["lr"] == 1.0
    epochs = [row for row in run.history if "epoch" in row]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert epochs[-1]["val/score"] == pytest.approx(info["final"]["val/score"])
    # the per-step trace: one table at the end (with its plot), not a burst of rows per epoch
    (trace,) = [row for row in run.history if "trace/_type" in row]
    assert trace["trace/_type"] == "table-file" and trace["trace/nrows"] == len(
        (records.run_paths(cfg).trace).read_text().splitlines()[1:]
    )
    assert "trace_step_size_table/_type" in trace
    assert len(run.history) == 3 + 1


def test_wandb_group_and_tags_follow_the_logger_config(tmp_path: Path, wandb_dir: Path) -> None:
    cfg = toy_config(tmp_path / "results", "logger=wandb", "optimizer=sgd_m",
                     "logger.group=my-sweep", "logger.tags=[baseline]")  # fmt: skip
    train.train(cfg)
    (run,) = offline_runs(wandb_dir)
    assert (run.group, run.job_type) == ("my-sweep", "sgd_m")
    assert "baseline" in run.tags and "profile:default" in run.tags
    (trace,) = [row for row in run.history if "trace/_type" in row]
    assert "trace_step_size_table/_type" not in trace  # SGD-M has no step size to plot


def _epochs(run) -> list[int]:
    return [row["epoch"] for row in run.history if "epoch" in row]


@pytest.mark.slow
def test_wandb_killed_and_resumed_run_continues_one_wandb_run(tmp_path: Path, wandb_dir: Path):
    command = [sys.executable, "-m", "experiments.train", "experiment=synthetic_ls", "profile=smoke",
               "epochs=400", "logger=wandb", f"results_dir={tmp_path / 'r'}",
               f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        checkpoint = next((tmp_path / "r").glob("runs/synthetic_ls/.partial/*/checkpoint.pt"), None)
        deadline = time.monotonic() + 120
        while checkpoint is None and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
            checkpoint = next((tmp_path / "r").glob("runs/*/.partial/*/checkpoint.pt"), None)
        time.sleep(0.5)  # a few more epochs
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert checkpoint is not None, "the first process wrote no checkpoint to resume from"

    resumed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (info_file,) = (tmp_path / "r").glob("runs/synthetic_ls/*/run.json")
    info = json.loads(info_file.read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 400
    assert "resumes after epoch" in resumed.stdout

    killed, continued = offline_runs(wandb_dir)
    assert killed.run_id == continued.run_id == info["run_id"]  # `wandb sync` makes them one run
    assert killed.name == continued.name == "momo lr=1 seed=0"
    # The kill loses what W&B had not written yet; the resumed run logs its checkpoint's epochs again.
    before, after = _epochs(killed), _epochs(continued)
    assert before == list(range(1, len(before) + 1))
    assert after == list(range(1, 401))


def test_wandb_defaults_to_offline_without_an_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert loggers.wandb_mode() == "offline"
    assert loggers.wandb_mode("disabled") == "disabled"
