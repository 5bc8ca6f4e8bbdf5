"""A sweep's summary on W&B (experiments.runner.wandb_summary), offline: the figures and tables of an
experiment as one run in the sweep's group."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from wandb_records import offline_runs

from experiments.runner import sweep, wandb_summary

matplotlib.use("Agg")
from matplotlib import pyplot as plt


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "experiment: fashion_mnist_mlp\nparams:\n  seed: [0, 1]\noptimizers:\n"
        "  momo:\n    optimizer.lr: [0.1, 1.0]\n"
    )
    return path


def test_wandb_summary_logs_figures_and_tables_in_the_sweeps_group(
    tmp_path: Path, wandb_dir: Path
) -> None:
    results, plots = tmp_path / "results", tmp_path / "plots"
    (plots / "fashion_mnist_mlp").mkdir(parents=True)
    results.mkdir()
    figure, axes = plt.subplots()
    axes.plot([1, 2], [3, 4])
    figure.savefig(plots / "fashion_mnist_mlp" / "robustness.png")
    plt.close(figure)
    summary = pd.DataFrame(
        {"method": ["momo", "momo"], "lr": [0.1, 1.0], "val/score_mean": [0.8, 0.9]}
    )
    summary.to_csv(results / "fashion_mnist_mlp_summary.csv", index=False)
    pd.DataFrame({"method": ["momo"], "width": [2.0]}).to_csv(
        results / "fashion_mnist_mlp_robustness.csv", index=False
    )
    pd.DataFrame({"run_id": ["x"]}).to_csv(results / "fashion_mnist_mlp.csv", index=False)
    overrides = ["profile=smoke", f"results_dir={results}"]
    sweep_file = _sweep_file(tmp_path)

    run_id = wandb_summary.log_summary("fashion_mnist_mlp", overrides, sweep_file, plots)

    blocks = sweep.load_sweep("fashion_mnist_mlp", sweep_file)
    group = sweep.sweep_id("fashion_mnist_mlp", blocks, overrides)
    (run,) = offline_runs(wandb_dir)
    assert run.run_id == run_id == f"{group}-summary"
    assert (run.group, run.job_type, run.name) == (group, "summary", "fashion_mnist_mlp summary")
    assert run.config["runs"] == {"completed": 0, "diverged": 0, "failed": 0, "missing": 4}
    (logged,) = run.history
    assert logged["figures/robustness/_type"] == "image-file"
    tables = {k.split("/")[1] for k in logged if k.startswith("tables/")}
    assert tables == {"summary", "robustness"}  # not the per-epoch table of every run
    assert logged["tables/summary/nrows"] == 2


def test_wandb_summary_without_aggregates_says_what_to_run(tmp_path: Path, wandb_dir: Path):
    with pytest.raises(
        FileNotFoundError, match=r"make aggregate plot EXPERIMENT=fashion_mnist_mlp"
    ):
        wandb_summary.log_summary(
            "fashion_mnist_mlp", [f"results_dir={tmp_path}"], _sweep_file(tmp_path), tmp_path
        )
