"""Sweeps through the real runner: the sweep file, Hydra multiruns, status, aggregate, plot, and resume.

Smoke profile (synthetic stand-in data, a few batches), so the runs take seconds.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from tiny_sweep import ENV, ROOT, TINY, run_tiny_sweep

from experiments.layout import RunPaths
from experiments.runner import records, sweep
from experiments.runner.sweep import expected_runs, load_sweep, multirun_command


def _records(tmp_path: Path) -> list[dict]:
    root = tmp_path / "runs" / "fashion_mnist_mlp"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/run.json"))]


def test_load_sweep_blocks_and_their_hydra_commands(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY)
    blocks = load_sweep("fashion_mnist_mlp", tmp_path / "s.yaml")
    assert [b.optimizer for b in blocks] == ["momo", "sgd_m"]
    command = multirun_command("fashion_mnist_mlp", blocks[0], "parallel", ["profile=smoke"])
    assert command[1:] == [
        "-m", "experiments.train", "-m", "experiment=fashion_mnist_mlp", "optimizer=momo",
        "seed=0,1", "optimizer.lr=0.1,10.0", "hydra/launcher=parallel", "profile=smoke",
    ]  # fmt: skip
    runs = list(expected_runs("fashion_mnist_mlp", blocks, ["hydra.sweep.dir=x"]))
    assert len(runs) == 8 and all(not any(o.startswith("hydra") for o in r) for r in runs)


def test_load_sweep_block_values_replace_shared_ones_and_lists_give_multiruns(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "experiment: e\nparams: {seed: [0], optimizer.lr: [1, 2]}\noptimizers:\n"
        "  adamw:\n    - {optimizer.lr: 0.1, optimizer.weight_decay: 0.001}\n"
        "    - {optimizer.lr: 0.01, optimizer.weight_decay: 0.01}\n  momo: {}\n"
    )
    blocks = load_sweep("e", tmp_path / "s.yaml")
    assert [b.overrides() for b in blocks] == [
        ["seed=0", "optimizer.lr=0.1", "optimizer.weight_decay=0.001"],
        ["seed=0", "optimizer.lr=0.01", "optimizer.weight_decay=0.01"],
        ["seed=0", "optimizer.lr=1,2"],
    ]


SWEEPS = sorted(p.stem for p in (ROOT / "configs/sweep").glob("*.yaml"))


@pytest.mark.parametrize("experiment", SWEEPS)
def test_every_paper_sweep_file_loads(experiment):
    blocks = load_sweep(experiment)
    assert blocks and all("seed" in b.params and "optimizer.lr" in b.params for b in blocks)


@pytest.mark.slow
def test_sweep_end_to_end_through_aggregate_and_plot(tmp_path):
    done = run_tiny_sweep(
        tmp_path, "--launcher", "parallel", "hydra.launcher.n_jobs=2", timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 8
    assert {(r["optimizer"], r["lr"], r["seed"]) for r in records} == {
        (o, lr, s) for o, lrs in (("momo", (0.1, 10.0)), ("sgd_m", (0.01, 0.1))) for lr in lrs
        for s in (0, 1)
    }  # fmt: skip
    status = run_tiny_sweep(tmp_path, "--status")
    assert "8 runs expected" in status.stdout and "missing 0" in status.stdout, status.stdout

    subprocess.run(
        [sys.executable, "-m", "experiments.analysis.aggregate", "fashion_mnist_mlp", "--results-dir",
         str(tmp_path), "--file", str(tmp_path / "tiny.yaml"), "profile=smoke"],
        cwd=ROOT, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    table = pd.read_parquet(tmp_path / "fashion_mnist_mlp.parquet")
    assert len(table) == 8 * 2  # the smoke profile trains 2 epochs
    assert table["synthetic"].all() and (table["profile"] == "smoke").all()
    summary = pd.read_csv(tmp_path / "fashion_mnist_mlp_summary.csv")
    summary = summary[
        summary["figure"] == "fashion_mnist_mlp"
    ]  # the paper's figure, not the extras
    assert len(summary) == 4 and (summary["n_seeds"] == 2).all()
    trace = pd.read_parquet(tmp_path / "fashion_mnist_mlp_trace.parquet")
    assert trace.loc[trace["optimizer"] == "momo", "adaptive_step"].notna().all()

    plots = tmp_path / "plots"
    subprocess.run(
        [sys.executable, "-m", "experiments.analysis.plot", "fashion_mnist_mlp", "--results-dir", str(tmp_path),
         "--plots-dir", str(plots)], cwd=ROOT, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    for name in ("robustness", "training_curves", "step_sizes_momo"):
        assert (plots / "fashion_mnist_mlp" / f"{name}.png").stat().st_size > 1000


@pytest.mark.slow
def test_sweep_killed_with_sigkill_and_rerun_records_every_run_once(tmp_path):
    # Long enough runs that the kill lands mid-sweep (and likely mid-run).
    sweep = run_tiny_sweep(tmp_path, "epochs=40", background=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(_records(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    killed_with = len(_records(tmp_path))
    assert 2 <= killed_with < 8, "the kill should land mid-sweep"

    done = run_tiny_sweep(tmp_path, "epochs=40", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 8
    assert len({r["run_id"] for r in records}) == 8
    assert len({(r["optimizer"], r["lr"], r["seed"]) for r in records}) == 8
    assert all(r["status"] in ("completed", "diverged") for r in records)
    assert all(r["epochs_done"] == 40 for r in records if r["status"] == "completed")
    assert not list((tmp_path / "runs" / "fashion_mnist_mlp" / ".partial").glob("*/checkpoint.pt"))
    status = run_tiny_sweep(tmp_path, "epochs=40", "--status")
    assert "missing 0" in status.stdout and "failed 0" in status.stdout


def _write(paths: RunPaths, status: str) -> None:
    records.write_record(paths, config=OmegaConf.create({}), metrics=[], trace=[],
                         info={"status": status})  # fmt: skip


def test_progress_line_counts_records_and_running_runs_with_an_eta(tmp_path: Path) -> None:
    runs = [RunPaths(tmp_path, "e", f"{i:012d}") for i in range(6)]
    _write(runs[0], "completed")
    _write(runs[1], "diverged")
    _write(runs[2], "failed")
    clock = iter([100.0, 100.0, 100.0, 160.0])
    progress = sweep.Progress("e-0123abcd", runs, clock=lambda: next(clock))
    with records.run_lock(runs[3]):
        assert progress.line() == (
            "e-0123abcd: 2/6 done (1 completed, 1 diverged), 1 failed, 1 running; "
            "0s elapsed, ETA unknown"
        )
        assert ", 0 running;" in progress.line(live=False)  # the sweep's last line: records only
    _write(runs[3], "completed")
    assert progress.line() == (
        "e-0123abcd: 3/6 done (2 completed, 1 diverged), 1 failed, 0 running; 1m00s elapsed, ETA 2m00s"
    )


def test_sweep_gives_every_block_the_sweeps_group_and_skips_finished_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY)
    extra = ["profile=smoke", f"results_dir={tmp_path}"]
    blocks = load_sweep("fashion_mnist_mlp", sweep_file)
    group = sweep.sweep_id("fashion_mnist_mlp", blocks, extra)
    for paths in sweep.expected_paths("fashion_mnist_mlp", blocks[1:], extra):
        _write(paths, "completed")
    with caplog.at_level(logging.INFO):
        sweep.run_sweep(
            "fashion_mnist_mlp",
            "parallel",
            extra,
            dry_run=True,
            sweep_file=sweep_file,
            batched=False,
        )
    logged = [r.getMessage() for r in caplog.records]
    (command,) = [m for m in logged if m.startswith("$ ")]
    assert "optimizer=momo" in command and command.endswith(f"logger.group={group}")
    assert "the sgd_m block's 4 runs are finished already" in logged
    assert f"sweep {group}: 8 runs on launcher parallel, 0 of them batched" in logged
    assert "sequential runs (--sequential): momo, sgd_m" in logged


def test_sweep_id_changes_with_the_runs_only(tmp_path: Path) -> None:
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY)
    blocks = load_sweep("fashion_mnist_mlp", sweep_file)
    plain = sweep.sweep_id("fashion_mnist_mlp", blocks)
    assert plain == sweep.sweep_id("fashion_mnist_mlp", blocks, ["results_dir=x", "logger=wandb",
                                                                  "hydra.launcher.n_jobs=2"])  # fmt: skip
    assert plain != sweep.sweep_id("fashion_mnist_mlp", blocks, ["profile=smoke"])
    assert plain != sweep.sweep_id("fashion_mnist_mlp", blocks[:1])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], ["a=1", "logger.group=s-1"]),
        (["+logger.group=mine"], ["a=1", "logger.group=mine"]),
        (["logger.group=mine"], ["a=1", "logger.group=mine"]),
    ],
)
def test_with_group_honours_a_group_of_the_users(extra: list[str], expected: list[str]) -> None:
    assert sweep.with_group(["a=1", *extra], "s-1") == expected


def test_sweep_with_a_bad_value_stops_before_running_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("[0.01, 0.1]", "[0.01, -0.1]"))
    result = subprocess.run(
        [sys.executable, "-m", "experiments.runner.sweep", "fashion_mnist_mlp", "--file", str(bad),
         "profile=smoke", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: Invalid learning rate: -0.1 (a finite number > 0)",
        "(HYDRA_FULL_ERROR=1 shows the traceback)",
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "multirun").exists()


def test_status_lists_the_records_its_aggregate_leaves_out_and_why(tmp_path: Path, capsys) -> None:
    from hydra import compose, initialize_config_dir

    from experiments.layout import CONFIG_DIR

    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY)
    overrides = ["profile=smoke", f"results_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        quick = compose("train", overrides=["experiment=fashion_mnist_mlp", "epochs=1", *overrides])
    records.write_record(
        records.run_paths(quick), config=quick, metrics=[], trace=[], info={"status": "completed"}
    )  # a quick run beside the sweep's 2-epoch runs
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["fashion_mnist_mlp", "--file", str(sweep_file), "--status", *overrides])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "8 runs expected" in out and "missing 8" in out
    assert "left out of its aggregate: 1 other record\n" in out
    assert "1 run with epochs=1 (the sweep's protocol: 2)" in out
