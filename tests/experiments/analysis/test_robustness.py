"""The lr-robustness number on hand-made tables and on the paper's records."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.analysis.robustness import band_width, robustness_from_paper, robustness_from_seeds

LRS = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
PAPER = Path(__file__).resolve().parents[3] / "results" / "paper"


def test_band_width_spans_the_contiguous_good_lrs_around_the_best():
    scores = np.array([50.0, 89.5, 90.0, 89.2, 80.0, 89.9])  # 100 is good again, but cut off by 10
    assert band_width(LRS, scores, 1.0) == pytest.approx(2.0)  # 1e-2 .. 1
    assert band_width(LRS, scores, 10.0) == pytest.approx(4.0)  # 1e-2 .. 100
    assert band_width(LRS, scores, 0.1) == pytest.approx(0.0)  # the best lr alone


def test_band_width_diverged_lr_cuts_the_band():
    scores = np.array([90.0, 90.0, np.nan, 90.0, 90.0, 90.0])
    assert band_width(LRS, scores, 5.0) == pytest.approx(1.0)  # 1e-3 .. 1e-2, the first best


def test_band_width_lower_is_better_and_all_diverged():
    losses = np.array([5.0, 1.0, 1.05, 3.0, 1.0, 1.0])
    assert band_width(LRS, losses, 0.1, higher_is_better=False) == pytest.approx(1.0)
    assert np.isnan(band_width(LRS, np.full(6, np.nan), 1.0))


def _seeds_table(noise: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    mean = {"wide": [0.90, 0.95, 0.95, 0.95, 0.94, 0.50], "narrow": [0.5, 0.7, 0.95, 0.8, 0.6, 0.1]}
    rows = [
        {"method": m, "lr": lr, "seed": s, "score": mu + noise * rng.standard_normal()}
        for m, means in mean.items()
        for lr, mu in zip(LRS, means, strict=True)
        for s in range(3)
    ]
    return pd.DataFrame(rows)


def test_robustness_from_seeds_widths_and_exact_interval_without_noise():
    table = robustness_from_seeds(_seeds_table(noise=0.0), tolerances=(1.5, 5.0)).set_index(
        ["method", "tolerance"]
    )
    assert table.loc[("wide", 1.5), "width"] == pytest.approx(3.0)  # 1e-2 .. 10
    assert table.loc[("narrow", 5.0), "width"] == pytest.approx(0.0)
    assert table.loc[("wide", 1.5), "best_lr"] == pytest.approx(1e-2)
    # Identical seeds: every bootstrap resample gives the same width.
    assert (table["low"] == table["width"]).all() and (table["high"] == table["width"]).all()


def test_robustness_from_seeds_interval_widens_with_seed_noise():
    table = robustness_from_seeds(_seeds_table(noise=0.01), tolerances=(1.0,))
    wide = table.set_index("method").loc["wide"]
    assert wide["low"] <= wide["width"] <= wide["high"]
    assert wide["high"] > wide["low"]


def test_robustness_from_paper_mnist_records():
    table = robustness_from_paper(pd.read_csv(PAPER / "mnist_mlp.csv")).set_index(
        ["method", "tolerance"]
    )
    # MoMo's 1-point band spans lr 0.1 .. 1000 (the large-lr plateau); SGD-M's one decade.
    assert table.loc[("momo", 1.0), "width"] == pytest.approx(4.0)
    assert table.loc[("sgd-m", 1.0), "width"] == pytest.approx(1.0)
    assert table.loc[("momo", 1.0), "best_score"] == pytest.approx(0.9797, abs=1e-3)
