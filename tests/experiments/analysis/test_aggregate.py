"""Run records -> the tidy table, the summary, the trace table (on made-up run directories)."""

import pandas as pd
import pytest
from fake_runs import write_run, write_sweep

from experiments.analysis.aggregate import aggregate, build_table, summarise

EPOCHS = 3


@pytest.fixture
def results(tmp_path):
    write_sweep(
        tmp_path,
        "fake_exp",
        grids={"momo": [1e-2, 1.0, 100.0], "adam": [1e-3, 1e-1]},
        seeds=(0, 1, 2),
        diverged={("momo", 100.0)},
        failed={("adam", 1e-1, 2)},
    )
    return tmp_path


def test_build_table_one_row_per_run_and_epoch_with_config_columns(results):
    table, _ = build_table(results, "fake_exp")
    assert table["run_id"].nunique() == 15
    # completed runs: every epoch; diverged: the epoch they reached; failed: one empty row
    assert len(table) == 11 * EPOCHS + 3 * 1 + 1
    assert {"optimizer.beta", "optimizer.betas", "task.batch_size", "val/score", "status"} <= set(
        table.columns
    )
    momo = table[table["optimizer"] == "momo"]
    assert (momo["optimizer.beta"] == 0.9).all()
    assert set(table.loc[table["status"] == "diverged", "lr"]) == {100.0}


def test_summarise_counts_and_final_epoch_statistics(results):
    table, _ = build_table(results, "fake_exp")
    summary = summarise(table).set_index(["method", "lr"])
    assert summary.loc[("momo", 100.0), ["n_completed", "n_diverged", "n_failed"]].tolist() == [
        0,
        3,
        0,
    ]
    assert summary.loc[("adam", 0.1), ["n_completed", "n_failed"]].tolist() == [2, 1]
    assert pd.isna(summary.loc[("momo", 100.0), "val/score_mean"])
    final = table[
        (table["epoch"] == EPOCHS - 1) & (table["method"] == "momo") & (table["lr"] == 1.0)
    ]
    assert summary.loc[("momo", 1.0), "val/score_mean"] == pytest.approx(final["val/score"].mean())
    assert summary.loc[("momo", 1.0), "val/score_std"] == pytest.approx(final["val/score"].std())


def test_trace_cap_is_lr_over_rho(tmp_path):
    write_run(tmp_path, "t", "momo", 1.0, 0)  # no bias correction: rho = 1
    write_run(tmp_path, "t", "momo_adam", 0.1, 0)  # always bias-corrected with beta1 = 0.9
    _, trace = build_table(tmp_path, "t")
    momo = trace[trace["optimizer"] == "momo"]
    assert (momo["cap"] == 1.0).all()
    adam = trace[trace["optimizer"] == "momo_adam"].sort_values("step")
    assert adam["cap"].tolist() == pytest.approx((0.1 / (1 - 0.9 ** adam["step"])).tolist())


def test_method_label_names_settings_that_vary_within_an_optimizer(tmp_path):
    write_run(tmp_path, "t", "momo", 1.0, 0, extra={"weight_decay": 0.0})
    write_run(tmp_path, "t", "momo", 1.0, 0, extra={"weight_decay": 1e-4})
    write_run(tmp_path, "t", "adam", 1e-3, 0)
    table, _ = build_table(tmp_path, "t")
    assert set(table["method"]) == {"momo (weight_decay=0.0)", "momo (weight_decay=0.0001)", "adam"}


def test_aggregate_writes_every_table(results, capsys):
    out = aggregate("fake_exp", results)
    assert set(out) == {"table", "parquet", "summary", "robustness", "trace"}
    table = pd.read_parquet(out["parquet"])
    assert len(table) == len(pd.read_csv(out["table"]))
    robustness = pd.read_csv(out["robustness"])
    assert set(robustness["method"]) == {"momo", "adam"}
    assert set(robustness["tolerance"]) == {1.0, 5.0}
    assert not (results / "runs" / "fake_exp" / ".tmp").exists()  # reading never writes records
