"""The lr-band width: in the score's own unit and direction, flagged "≥" at the end of its range,
measured on the lr range common to the methods compared with the own-grid value beside it."""

import numpy as np
import pandas as pd
import pytest
from fake_runs import figure_spec

from experiments.analysis.robustness import band, markdown, widths
from experiments.analysis.style import label

LRS = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])


def _summary(scores: dict[str, tuple[list[float], list[float]]], figure: str = "e") -> pd.DataFrame:
    """A final-epoch summary: method -> (lrs, score means in recorded units)."""
    rows = [
        {"figure": figure, "method": m, "variant": "", "panel": "", "line": "", "lr": lr}
        | {"score_mean": s, "score_std": 0.01, "n_seeds": 3, "n_diverged": 0}
        for m, (lrs, means) in scores.items()
        for lr, s in zip(lrs, means, strict=True)
    ]
    return pd.DataFrame(rows)


def test_band_spans_the_contiguous_good_lrs_around_the_best():
    spec = figure_spec(["m"])  # accuracy points
    scores = np.array([50.0, 89.5, 90.0, 89.2, 80.0, 89.9])  # 100 is good again, cut off by 10
    assert band(LRS, scores, 1.0, spec).tolist() == [1, 2, 3]
    assert band(LRS, scores, 10.0, spec).tolist() == [1, 2, 3, 4, 5]
    assert band(LRS, np.array([90.0, 90.0, np.nan, 90.0, 90.0, 90.0]), 5.0, spec).tolist() == [0, 1]
    assert band(LRS, np.full(6, np.nan), 1.0, spec).size == 0


def test_band_bleu_tolerance_is_in_bleu_points():
    # 30 and 29.5 BLEU are within one BLEU point (a fixed scale of 100 made that 50 "points").
    spec = figure_spec(["m"], kind="bleu")
    assert band(LRS[:3], np.array([30.0, 29.5, 20.0]), 1.0, spec).tolist() == [0, 1]


def test_band_mse_is_lower_is_better_and_relative():
    spec = figure_spec(["m"], kind="mse")
    mse = np.array([5e-3, 1.0e-3, 1.08e-3, 1.2e-3, 1e-3 * 3, 9.0])
    assert band(LRS, mse, 0.1, spec).tolist() == [1, 2]  # within 10 % of the lowest
    assert band(LRS, mse, 1.0, spec).tolist() == [1, 2, 3]  # within a factor 2
    assert band(LRS, mse * 1e-6, 0.1, spec).tolist() == [1, 2]  # the same at any scale


def test_widths_flag_a_band_at_the_end_of_the_grid():
    spec = figure_spec(["momo"], compare=[])
    summary = _summary({"momo": (LRS, [0.5, 0.8, 0.95, 0.95, 0.95, 0.95])})
    row = widths(summary, spec).set_index("tolerance").loc[1.0]
    assert (row["width_grid"], row["censored_grid"]) == (3.0, True)  # 0.1 .. 100, the grid's top
    assert row["best_lr"] == 0.1 and row["best_score"] == pytest.approx(0.95)  # recorded units
    inside = _summary({"momo": (LRS, [0.5, 0.95, 0.95, 0.95, 0.8, 0.5])})
    row = widths(inside, spec).set_index("tolerance").loc[1.0]
    assert (row["width_grid"], row["censored_grid"]) == (2.0, False)


def test_widths_on_the_common_lr_range_with_the_own_grid_beside():
    # MNIST-like grids: MoMo to 1e3, SGD-M to 1e2; MoMo is good from 0.1 to its grid's end.
    spec = figure_spec(["momo", "sgd_m"], compare=[["momo", "sgd_m"]])
    momo_lrs = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0])
    summary = _summary(
        {
            "momo": (momo_lrs, [0.5, 0.8, 0.97, 0.97, 0.97, 0.97, 0.97]),
            "sgd_m": (LRS, [0.5, 0.8, 0.97, 0.97, 0.1, 0.1]),
        }
    )
    table = widths(summary, spec).set_index(["method", "tolerance"])
    momo, sgd = table.loc[("momo", 1.0)], table.loc[("sgd_m", 1.0)]
    assert (momo["lr_low"], momo["lr_high"]) == (1e-3, 100.0)
    assert (momo["width"], momo["censored"]) == (3.0, True)  # 0.1 .. 100, cut by the range
    assert (momo["width_grid"], momo["censored_grid"]) == (4.0, True)  # 0.1 .. 1000, the grid's end
    assert (sgd["width"], sgd["censored"]) == (1.0, False)
    text = markdown([(widths(summary, spec), spec)], label)
    assert "| e | MoMo |  | 97.00 ± 1.00 (0.1) | ≥ 3.0 (≥ 4.0) |" in text
    assert "| e | SGD-M |  | 97.00 ± 1.00 (0.1) | 1.0 (1.0) |" in text


def test_widths_compare_groups_of_the_figure_only():
    # ViT-like grids that do not overlap: each MoMo is compared with its base method only.
    spec = figure_spec(
        ["momo", "momo_adam", "sgd_m", "adam"], compare=[["momo", "sgd_m"], ["momo_adam", "adam"]]
    )
    high, low = np.array([0.1, 1.0, 10.0]), np.array([1e-4, 1e-3, 1e-2])
    summary = _summary(
        {"momo": (high, [0.8] * 3), "sgd_m": (high[:2], [0.8] * 2), "momo_adam": (low, [0.8] * 3)}
        | {"adam": (low, [0.8] * 3)}
    )
    table = widths(summary, spec).drop_duplicates("method").set_index("method")
    assert (table.loc["momo", "lr_low"], table.loc["momo", "lr_high"]) == (0.1, 1.0)
    assert (table.loc["adam", "lr_low"], table.loc["adam", "lr_high"]) == (1e-4, 1e-2)


def test_widths_use_the_plotted_means_of_partly_diverged_settings():
    # A setting whose mean is not finite (a seed diverged without a score) cuts the band.
    spec = figure_spec(["m"])
    summary = _summary({"m": (LRS, [0.9, 0.9, np.nan, 0.9, 0.9, 0.9])})
    row = widths(summary, spec).set_index("tolerance").loc[5.0]
    assert (row["width_grid"], row["censored_grid"]) == (1.0, True)
    assert widths(_summary({"m": (LRS, [np.nan] * 6)}), spec)["width"].isna().all()
