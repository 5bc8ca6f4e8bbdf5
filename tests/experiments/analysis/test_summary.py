"""The summary format from fake run records of every score kind, and from the paper's own records."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_runs import figure_spec, write_run, write_sweep

from experiments import layout
from experiments.analysis.runs import build_table
from experiments.analysis.spec import load_spec
from experiments.analysis.summary import COLUMNS, best, final, summarise_paper, summarise_runs

PAPER = Path(__file__).resolve().parents[3] / "results" / "paper"


def _table(root: Path, experiment: str = "e") -> pd.DataFrame:
    return build_table(layout.record_dirs(root, experiment))[0]


def _row(summary: pd.DataFrame, method: str, lr: float, **variant) -> pd.Series:
    rows = summary[(summary["method"] == method) & np.isclose(summary["lr"], lr)]
    for role, value in variant.items():
        rows = rows[rows[role] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _finals(table: pd.DataFrame, method: str, lr: float, key: str = "val/score") -> pd.Series:
    runs = table[(table["method"] == method) & (table["lr"] == lr)]
    return runs.sort_values("epoch").groupby("run_id").tail(1)[key]


def test_summarise_runs_final_epoch_mean_and_std_over_seeds(tmp_path):
    write_sweep(tmp_path, "e", grids={"momo": [0.1, 1.0], "adam": [1e-3]})
    table = _table(tmp_path)
    curves = summarise_runs(table, figure_spec(["momo", "adam"]))
    assert list(curves.columns) == list(COLUMNS)
    assert sorted(curves["epoch"].unique()) == [1, 2, 3]
    row = _row(final(curves), "momo", 1.0)
    finals = _finals(table, "momo", 1.0)
    assert row["score_mean"] == pytest.approx(finals.mean())
    assert row["score_std"] == pytest.approx(finals.std(ddof=1))
    assert (row["n_seeds"], row["n_diverged"], row["epoch"]) == (3, 0, 3)
    assert row["train_loss_mean"] == pytest.approx(_finals(table, "momo", 1.0, "train/loss").mean())


def test_summarise_runs_counts_every_seed_of_a_partly_diverged_setting(tmp_path):
    # Seed 2 of SGD-M at lr 10 diverges after epoch 1 (val score at chance, NaN training loss).
    write_sweep(tmp_path, "e", grids={"sgd_m": [0.1, 10.0]}, diverged={("sgd_m", 10.0, 2)})
    table = _table(tmp_path)
    curves = summarise_runs(table, figure_spec(["sgd_m"]))
    row = _row(final(curves), "sgd_m", 10.0)
    completed = table[(table["lr"] == 10.0) & (table["status"] == "completed")]
    survivors = completed[completed["epoch"] == 3]["val/score"].tolist()
    assert len(survivors) == 2
    assert row["score_mean"] == pytest.approx(np.mean([*survivors, 0.1]))  # all three seeds
    assert row["score_std"] == pytest.approx(np.std([*survivors, 0.1], ddof=1))
    assert math.isnan(row["train_loss_mean"])  # a NaN seed makes the mean NaN, as in the records
    assert (row["n_seeds"], row["n_diverged"]) == (3, 1)
    # The diverged seed keeps its last values for the epochs after it stopped.
    by_epoch = curves[(curves["lr"] == 10.0)].set_index("epoch")
    assert by_epoch["n_diverged"].tolist() == [1, 1, 1]
    assert by_epoch["n_seeds"].tolist() == [3, 3, 3]


def test_summarise_runs_coupled_weight_decay_keeps_one_method_per_optimizer(tmp_path):
    # ImageNet-ViT: the weight decay is set from the lr (lr · λ = 1e-4).
    lrs = [1e-3, 5e-3, 1e-2, 2e-2]
    coupled = lambda optimizer, lr: [{"optimizer.weight_decay": 1e-4 / lr}]  # noqa: E731
    write_sweep(tmp_path, "e", grids={"adamw": lrs, "momo_adam": lrs}, settings=coupled)
    spec = figure_spec(["adamw", "momo_adam"], coupled=["optimizer.weight_decay"])
    summary = final(summarise_runs(_table(tmp_path), spec))
    assert sorted(summary["method"].unique()) == ["adamw", "momo_adam"]
    assert summary.groupby("method")["lr"].apply(sorted).tolist() == [lrs, lrs]
    assert (summary["variant"] == "").all() and (summary["n_seeds"] == 3).all()


def _imagenet32_variants(optimizer: str, lr: float) -> list[dict]:
    lbs = [0.0, 0.9] if optimizer == "momo" else [None]
    return [
        {"optimizer.weight_decay": wd} | ({"optimizer.lb": lb} if lb is not None else {})
        for wd in (0.0, 1e-4)
        for lb in lbs
    ]


IMAGENET32_VARIANTS = [
    {"key": "optimizer.weight_decay", "role": "panel", "label": "λ", "values": [0, 1e-4]},
    {"key": "optimizer.lb", "role": "line", "label": "lb", "values": [0, 0.9]},
]


def test_summarise_runs_variants_become_panels_and_line_styles(tmp_path):
    write_sweep(
        tmp_path, "e", grids={"momo": [0.1, 1.0], "sgd_m": [0.1]}, seeds=(0,),
        settings=_imagenet32_variants,
    )  # fmt: skip
    spec = figure_spec(["momo", "sgd_m"], variants=IMAGENET32_VARIANTS)
    summary = final(summarise_runs(_table(tmp_path), spec))
    assert sorted(summary["method"].unique()) == ["momo", "sgd_m"]  # no suffixed "methods"
    momo = summary[summary["method"] == "momo"]
    assert sorted(zip(momo["panel"], momo["line"], strict=True)) == sorted(
        [(p, line) for p in ("0", "0.0001") for line in ("0", "0.9")] * 2
    )
    assert set(momo["variant"]) == {
        "λ=0, lb=0",
        "λ=0, lb=0.9",
        "λ=0.0001, lb=0",
        "λ=0.0001, lb=0.9",
    }
    sgd = summary[summary["method"] == "sgd_m"]
    assert set(sgd["line"]) == {""} and set(sgd["variant"]) == {"λ=0", "λ=0.0001"}


def test_summarise_runs_rejects_a_swept_setting_the_spec_does_not_declare(tmp_path):
    write_sweep(tmp_path, "e", grids={"momo": [0.1]}, seeds=(0,), settings=_imagenet32_variants)
    with pytest.raises(ValueError, match=r"differ in optimizer.lb, optimizer.weight_decay"):
        summarise_runs(_table(tmp_path), figure_spec(["momo"]))


@pytest.mark.parametrize("kind", ["auc", "bleu", "mse"])
def test_summarise_runs_other_score_kinds(tmp_path, kind):
    write_sweep(tmp_path, "e", grids={"momo_adam": [1e-4, 1e-3, 1e-2]}, kind=kind)
    table = _table(tmp_path)
    summary = final(summarise_runs(table, figure_spec(["momo_adam"], kind=kind)))
    row = _row(summary, "momo_adam", 1e-3)
    assert row["score_mean"] == pytest.approx(_finals(table, "momo_adam", 1e-3).mean())
    picked = best(summary, figure_spec(["momo_adam"], kind=kind)).iloc[0]
    assert picked["lr"] == 1e-3  # the fake score peaks at 1e-3 for Adam types, in either direction


def test_summarise_runs_direction_must_match_the_records(tmp_path):
    write_sweep(tmp_path, "e", grids={"momo": [0.1]}, kind="mse")
    with pytest.raises(ValueError, match="higher_is_better=False"):
        summarise_runs(_table(tmp_path), figure_spec(["momo"], kind="acc"))


def test_summarise_runs_score_is_any_recorded_metric(tmp_path):
    # IWSLT: the figure's score is the token accuracy recorded beside the BLEU of val/score.
    write_sweep(
        tmp_path, "e", grids={"adam": [1e-3]}, kind="bleu",
        extra_metrics=lambda bleu: {"val/token_acc": bleu / 50.0},
    )  # fmt: skip
    spec = figure_spec(["adam"], kind="acc")
    spec.score.key = "val/token_acc"
    table = _table(tmp_path)
    row = _row(final(summarise_runs(table, spec)), "adam", 1e-3)
    assert row["score_mean"] == pytest.approx(_finals(table, "adam", 1e-3).mean() / 50.0)
    spec.score.key = "val/perplexity"
    with pytest.raises(ValueError, match="no run of e records val/perplexity"):
        summarise_runs(table, spec)


def test_summarise_runs_extras_figure_holds_its_own_methods(tmp_path):
    write_sweep(tmp_path, "e", grids={"momo": [0.1], "momo_star": [0.1], "sgd_m": [0.1]})
    spec = figure_spec(["momo", "sgd_m"], extras=["momo_star", "momo"])
    summary = final(summarise_runs(_table(tmp_path), spec))
    shown = summary.groupby("figure")["method"].apply(sorted).to_dict()
    assert shown == {"e": ["momo", "sgd_m"], "e_extras": ["momo", "momo_star"]}


def _paper(experiment: str) -> pd.DataFrame:
    spec = load_spec(experiment)
    summary = final(summarise_paper(pd.read_csv(PAPER / f"{spec.paper.record}.csv"), spec))
    return summary[summary["figure"] == experiment]  # the paper's figure, not the extras


def _record(experiment: str, name: str, lr: float, **columns) -> pd.Series:
    records = pd.read_csv(PAPER / f"{experiment}.csv")
    rows = records[(records["name"] == name) & np.isclose(records["lr"], lr)]
    rows = rows[rows["epoch"] == records["epoch"].max()]
    for column, value in columns.items():
        rows = rows[rows[column].astype(str) == value]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.mark.parametrize(
    ("experiment", "name", "lr", "variant", "shown"),
    [
        ("cifar100_resnet110", "momo", 100.0, {}, "0.212"),
        ("cifar10_vit", "sgd-m", 1.0, {}, "0.579 ± 0.415"),
        ("cifar10_resnet20", "momo", 100.0, {}, "0.100 ± 0.000"),  # MoMo's collapse at lr 100
        ("cifar10_vgg16", "momo-adam", 1e-3, {}, "0.909 ± 0.002"),
        ("mnist_mlp", "sgd-m", 10.0, {}, "0.098 ± 0.000"),  # diverged: counted at chance
        ("imagenet32_resnet18", "momo", 0.1, {"weight_decay": "0.0", "lb": "0.9"}, "0.487"),
    ],
)
def test_summarise_paper_holds_the_records_values(experiment, name, lr, variant, shown):
    record = _record(experiment, name, lr, **variant)
    roles = {"panel": "0", "line": "0.9"} if variant else {}  # the summary's text of λ=0.0, lb=0.9
    row = _row(_paper(experiment), name.replace("-", "_"), lr, **roles)
    assert row["score_mean"] == record["val_score"]  # exactly the record's number
    assert row["score_std"] == record["val_score_std"] or math.isnan(record["val_score_std"])
    text = f"{row['score_mean']:.3f}" + (
        f" ± {row['score_std']:.3f}" if math.isfinite(row["score_std"]) else ""
    )
    assert text.startswith(shown)


def test_summarise_paper_best_mnist_momo_and_diverged_sgd_m():
    summary = _paper("mnist_mlp")
    momo = best(summary, load_spec("mnist_mlp")).set_index("method").loc["momo"]
    assert (momo["lr"], f"{100 * momo['score_mean']:.2f} ± {100 * momo['score_std']:.2f}") == (
        1.0,
        "97.97 ± 0.08",
    )
    sgd = _row(summary, "sgd_m", 100.0)
    assert math.isnan(sgd["train_loss_mean"]) and sgd["n_diverged"] == sgd["n_seeds"] == 3


def test_summarise_paper_keeps_the_figure_setting_only():
    # CIFAR100: the records also hold SGD-M with an exponential schedule; the figure is constant lr.
    summary = _paper("cifar100_resnet110")
    assert summary.groupby("method")["lr"].count().to_dict() == {
        "adam": 8, "momo": 8, "momo_adam": 8, "sgd_m": 6,
    }  # fmt: skip
    assert set(summary["method"]) == {"momo", "momo_adam", "sgd_m", "adam"}  # no AdaBelief etc.


def test_summarise_runs_logger_and_device_never_split_a_setting(tmp_path):
    write_sweep(tmp_path, "e", grids={"momo": [0.1]}, seeds=(0, 1))
    wandb = {"_target_": "experiments.runner.loggers.WandbLogger", "project": "momo"}
    write_run(tmp_path, "e", "momo", 0.1, 2, settings={"logger": wandb, "device": "cuda"})
    summary = final(summarise_runs(_table(tmp_path), figure_spec(["momo"])))
    assert len(summary) == 1 and summary["n_seeds"].item() == 3
