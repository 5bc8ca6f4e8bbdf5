"""`make aggregate` and `make plot` as a user runs them: the sweep's runs, what was left out, the
tables, figures from the tables alone, and one clear line when there is nothing to aggregate."""

import shutil

import pandas as pd
import pytest
import yaml

from experiments.analysis import aggregate, plot
from experiments.analysis.summary import read_summary


def test_aggregate_cli_takes_the_sweeps_runs_and_says_what_it_left_out(sweep, capsys):
    args = ["fashion_mnist_mlp", "profile=smoke", "--file", str(sweep / "tiny.yaml")]
    aggregate.main([*args, f"results_dir={sweep}"])  # the results directory as the sweep's override
    out = capsys.readouterr().out
    assert (
        "fashion_mnist_mlp: 7 of the sweep's 8 runs aggregated (7 completed, 0 diverged), "
        "0 failed, 1 missing"
    ) in out
    assert "left out: 1 run with epochs=10 (the sweep's protocol: 2)" in out
    assert "| fashion_mnist_mlp | MoMo |" in out and "| fashion_mnist_mlp_extras | MoMo* |" in out
    summary = read_summary(sweep / "fashion_mnist_mlp_summary.csv")
    assert set(summary["figure"]) == {"fashion_mnist_mlp", "fashion_mnist_mlp_extras"}
    main = summary[summary["figure"] == "fashion_mnist_mlp"]
    assert main.set_index(["method", "lr"])["n_seeds"].to_dict() == {
        ("momo", 0.1): 2, ("momo", 10.0): 2, ("sgd_m", 0.01): 1,
    }  # fmt: skip
    runs = pd.read_csv(sweep / "fashion_mnist_mlp_runs.csv")
    assert runs["status"].value_counts().to_dict() == {"completed": 8, "missing": 1}
    assert runs["selected"].sum() == 7
    assert (
        runs.loc[~runs["selected"] & (runs["status"] == "completed"), "path"]
        .str.startswith("runs/fashion_mnist_mlp/")
        .all()
    )


def test_plot_draws_from_the_aggregated_tables_alone(aggregated, tmp_path):
    sweep = aggregated
    shutil.rmtree(sweep / "runs")  # a plot never reads a run directory
    plots = tmp_path / "plots"
    plot.main(["fashion_mnist_mlp", "--results-dir", str(sweep), "--plots-dir", str(plots)])
    for name in ("robustness", "robustness_extras", "training_curves", "step_sizes_momo"):
        assert (plots / "fashion_mnist_mlp" / f"{name}.png").stat().st_size > 1000, name
    assert not (plots / "fashion_mnist_mlp" / "step_sizes_sgd_m.png").exists()
    markdown = (plots / "best_scores.md").read_text()
    assert "| fashion_mnist_mlp |" in markdown and "±" in markdown


def test_aggregate_without_records_says_so_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        aggregate.main(["fashion_mnist_mlp", "--results-dir", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        f"aggregate: no runs of fashion_mnist_mlp under {tmp_path}/runs/fashion_mnist_mlp: "
        "make sweep EXPERIMENT=fashion_mnist_mlp makes them\n"
    )


def test_aggregate_of_records_of_another_protocol_names_the_overrides(sweep, capsys):
    for record in (sweep / "runs" / "fashion_mnist_mlp").iterdir():
        if yaml.safe_load((record / "config.yaml").read_text())["epochs"] == 10:
            shutil.rmtree(record)  # only the smoke runs are left
    with pytest.raises(SystemExit) as exit_:  # the smoke records, aggregated as the default profile
        aggregate.main(
            ["fashion_mnist_mlp", "--file", str(sweep / "tiny.yaml"), f"results_dir={sweep}"]
        )
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("aggregate: none of the records of fashion_mnist_mlp is a finished run")
    assert "7 runs with epochs=2 (the sweep's protocol: 10)" in err and err.count("\n") == 1


def test_plot_without_aggregated_tables_says_so_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        plot.main(["fashion_mnist_mlp", "--results-dir", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make aggregate EXPERIMENT=fashion_mnist_mlp" in err
    with pytest.raises(SystemExit):
        plot.main(["no_such_experiment", "--results-dir", str(tmp_path)])
    assert "no figure spec" in capsys.readouterr().err
