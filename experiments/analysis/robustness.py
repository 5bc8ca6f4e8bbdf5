"""Robustness to the learning rate as a number: the width of a method's good learning-rate band.

For one method, let s(lr) be the final validation score, averaged over seeds, on the swept lr grid. The
band at tolerance delta is the contiguous run of grid points around the best lr whose mean score is
within delta of the best one; its width is log10(largest lr) - log10(smallest lr), in decades. A
diverged setting (NaN score) is never in the band, so a collapse between two good lrs cuts the band.

The interval is a bootstrap over seeds: each lr's seeds are resampled with replacement and the width is
recomputed. The paper's records hold only the mean and standard deviation per lr, so for them the seeds
are redrawn from a normal distribution with that mean and deviation (a parametric bootstrap).

Tolerances are given in points: `scale` converts a score to points (100 for scores in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_TOLERANCES = (1.0, 5.0)
N_BOOTSTRAP = 1000

# The paper's default setting of each method: the robustness figures compare these.
PAPER_DEFAULTS = {"lr_schedule": "constant", "weight_decay": 0.0, "lb": (0.0, "0.0", "none")}


def band_width(
    lrs: np.ndarray, scores: np.ndarray, tolerance: float, higher_is_better: bool = True
) -> np.ndarray:
    """Width in decades of the good band around the best lr, for each row of `scores`.

    `lrs` has shape (n_lr,) sorted ascending; `scores` has shape (..., n_lr), NaN where diverged.
    Rows with no finite score get width NaN.
    """
    signed = np.where(np.isnan(scores), -np.inf, scores if higher_is_better else -scores)
    best = signed.max(axis=-1, keepdims=True)
    good = signed >= best - tolerance
    best_idx = signed.argmax(axis=-1)
    n_lr = lrs.shape[0]
    idx = np.arange(n_lr)
    # Grow the band from the best lr outwards: a point belongs to it when every point between it and
    # the best one is good.
    left_bad = np.where(~good & (idx <= best_idx[..., None]), idx, -1).max(axis=-1)
    right_bad = np.where(~good & (idx >= best_idx[..., None]), idx, n_lr).min(axis=-1)
    log_lr = np.log10(lrs)
    width = log_lr[right_bad - 1] - log_lr[left_bad + 1]
    return np.where(np.isfinite(best[..., 0]), width, np.nan)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(finite, alpha)), float(np.quantile(finite, 1.0 - alpha))


def _summarise(
    method: str,
    lrs: np.ndarray,
    mean: np.ndarray,
    boot_means: np.ndarray,
    tolerances: Sequence[float],
    scale: float,
    higher_is_better: bool,
    level: float,
) -> list[dict]:
    rows = []
    signed = np.where(np.isnan(mean), -np.inf, mean if higher_is_better else -mean)
    best = int(signed.argmax())
    for tol in tolerances:
        width = band_width(lrs, mean * scale, tol, higher_is_better)
        low, high = _interval(band_width(lrs, boot_means * scale, tol, higher_is_better), level)
        rows.append(
            {
                "method": method,
                "tolerance": tol,
                "width": float(width),
                "low": low,
                "high": high,
                "best_lr": float(lrs[best]),
                "best_score": float(mean[best]),
            }
        )
    return rows


def robustness_from_seeds(
    final: pd.DataFrame,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    *,
    scale: float = 100.0,
    higher_is_better: bool = True,
    n_bootstrap: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Robustness per method from per-seed final scores.

    `final` has one row per run with columns `method`, `lr`, `seed`, `score` (NaN when diverged).
    Returns one row per method and tolerance: width, bootstrap interval (low, high), best lr and score.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for method, runs in final.groupby("method", sort=True):
        grid = runs.pivot_table(index="lr", columns="seed", values="score", dropna=False)
        # pivot_table drops all-NaN cells; reindex keeps diverged seeds as NaN.
        grid = grid.reindex(columns=sorted(runs["seed"].unique())).sort_index()
        lrs = grid.index.to_numpy(dtype=float)
        scores = grid.to_numpy(dtype=float)  # (n_lr, n_seed)
        n_seed = scores.shape[1]
        # A setting with a diverged seed has no mean: it is not in any band.
        mean = scores.mean(axis=1)
        picks = rng.integers(0, n_seed, size=(n_bootstrap, *scores.shape))
        boot = np.take_along_axis(np.broadcast_to(scores, picks.shape), picks, axis=-1)
        rows += _summarise(
            str(method), lrs, mean, boot.mean(axis=-1), tolerances, scale, higher_is_better, level
        )
    return pd.DataFrame(rows)


def paper_final(records: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of each method's default setting in a paper record (see results/paper/)."""
    keep = pd.Series(True, index=records.index)
    for column, allowed in PAPER_DEFAULTS.items():
        if column in records:
            values = allowed if isinstance(allowed, tuple) else (allowed,)
            as_text = records[column].astype(str)
            keep &= as_text.isin([str(v) for v in values]) | records[column].isin(values)
    last = records.loc[keep]
    return last[last["epoch"] == last["epoch"].max()].rename(columns={"name": "method"})


def robustness_from_paper(
    records: pd.DataFrame,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    *,
    n_seeds: int = 3,
    scale: float = 100.0,
    n_bootstrap: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Robustness per method from a paper record (mean and std over seeds per lr and epoch)."""
    rng = np.random.default_rng(seed)
    final = paper_final(records)
    rows = []
    for method, runs in final.groupby("method", sort=True):
        runs = runs.sort_values("lr")
        lrs = runs["lr"].to_numpy(dtype=float)
        mean = runs["val_score"].to_numpy(dtype=float)
        std = runs["val_score_std"].fillna(0.0).to_numpy(dtype=float)
        draws = mean[:, None] + std[:, None] * rng.standard_normal((n_bootstrap, lrs.size, n_seeds))
        rows += _summarise(
            str(method), lrs, mean, draws.mean(axis=-1), tolerances, scale, True, level
        )
    return pd.DataFrame(rows)


def format_robustness(table: pd.DataFrame) -> str:
    """One line per method: the band widths with their intervals, for logs and figure labels."""
    lines = []
    for method, rows in table.groupby("method", sort=False):
        parts = [
            f"{r.tolerance:g} pt: {r.width:.1f} dec [{r.low:.1f}, {r.high:.1f}]"
            for r in rows.itertuples()
        ]
        lines.append(f"{method:>16}  " + "   ".join(parts))
    return "\n".join(lines)
