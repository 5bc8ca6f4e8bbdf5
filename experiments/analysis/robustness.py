"""Robustness to the learning rate as a number: the width of a method's good learning-rate band.

For one method and variant of a figure, s(lr) is the plotted final score (the summary's `score_mean`
times the spec's scale) on the swept grid: exactly the values the robustness figure draws. The band at
tolerance t is the contiguous run of grid points around the best lr whose score is within t of the best,
in the spec's unit: `points` (|s - best| <= t in plotted units: accuracy or AUC points, BLEU points) or
`relative` (|s - best| <= t·|best|: an MSE). A setting whose mean is not finite is never in the band, so
it cuts the band. The width is log10(highest lr) - log10(lowest lr) of the band, in decades:

- `width`: on the lr range common to the methods compared (the spec's `compare` groups: each MoMo
  against its base method; the overlap of their grids), so that widths of methods swept over different
  grids compare;
- `width_grid`: on the method's own grid, reported beside it.

A width is censored, printed "≥", when its band reaches the end of the range it is measured on: a wider
grid might have found a wider band.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.analysis import style
from experiments.analysis.spec import FigureSpec
from experiments.analysis.summary import variant_values


def band(lrs: np.ndarray, scores: np.ndarray, tolerance: float, spec: FigureSpec) -> np.ndarray:
    """Indices (into the ascending `lrs`) of the good band around the best score; empty if none."""
    signed = scores if spec.score.higher_is_better else -scores
    signed = np.where(np.isfinite(signed), signed, -np.inf)
    best = int(np.argmax(signed))
    if not np.isfinite(signed[best]):
        return np.array([], dtype=int)
    slack = tolerance if spec.score.tolerance == "points" else tolerance * abs(scores[best])
    good = signed >= signed[best] - slack
    low = best
    while low > 0 and good[low - 1]:
        low -= 1
    high = best
    while high < len(lrs) - 1 and good[high + 1]:
        high += 1
    return np.arange(low, high + 1)


def _width(lrs: np.ndarray, members: np.ndarray, lo: float, hi: float) -> tuple[float, bool]:
    """Width in decades of the band `members` within [lo, hi], and whether it is censored there.

    Censored: the band reaches the range's end and either continues beyond it or the grid ends there.
    """
    inside = members[(lrs[members] >= lo) & (lrs[members] <= hi)]
    if inside.size == 0:
        return math.nan, False
    first, last = lrs[inside[0]], lrs[inside[-1]]
    range_lrs = lrs[(lrs >= lo) & (lrs <= hi)]
    at_low = first == range_lrs[0] and (lrs[members[0]] < lo or members[0] == 0)
    at_high = last == range_lrs[-1] and (lrs[members[-1]] > hi or members[-1] == len(lrs) - 1)
    return float(np.log10(last) - np.log10(first)), bool(at_low or at_high)


def _common_range(final: pd.DataFrame, group: list[str]) -> tuple[float, float]:
    grids = final[final["method"].isin(group)].groupby("method")["lr"]
    return float(grids.min().max()), float(grids.max().min())


def widths(summary: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    """One row per figure, method, variant and tolerance from the final-epoch summary."""
    rows = []
    for figure, methods in spec.figures().items():
        in_figure = summary[summary["figure"] == figure]
        for panel in variant_values(in_figure, spec, "panel"):
            final = in_figure[in_figure["panel"] == panel]
            shown = style.order(final["method"].unique(), methods)
            pairs = final[["method", "variant"]].drop_duplicates().itertuples(index=False)
            for method, variant in sorted(pairs, key=lambda p: (shown.index(p[0]), p[1])):
                runs = final[(final["method"] == method) & (final["variant"] == variant)]
                rows += _rows(runs.sort_values("lr"), final, spec, shown, figure, panel)
    columns = ["figure", "method", "variant", "panel", "tolerance", "best_lr", "best_score"]
    columns += ["best_std", "width", "censored", "width_grid", "censored_grid", "lr_low", "lr_high"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _rows(runs, final, spec: FigureSpec, shown, figure: str, panel: str) -> list[dict]:
    """The width rows (one per tolerance) of one method and variant in a figure's panel."""
    method, variant = runs["method"].iloc[0], runs["variant"].iloc[0]
    lrs = runs["lr"].to_numpy(dtype=float)
    scores = runs["score_mean"].to_numpy(dtype=float) * spec.score.scale
    lo, hi = _common_range(final, spec.group_of(method, shown))
    rows = []
    for tolerance in spec.score.tolerances:
        row = {"figure": figure, "method": method, "variant": variant, "panel": panel}
        row |= {"tolerance": tolerance, "lr_low": lo, "lr_high": hi}
        members = band(lrs, scores, tolerance, spec)
        if members.size:
            signed = scores[members] * (1 if spec.score.higher_is_better else -1)
            best = members[np.argmax(signed)]
            best_row = runs.iloc[best]  # the score in recorded units, as in the summary
            row |= {"best_lr": lrs[best], "best_score": best_row["score_mean"]}
            row["best_std"] = best_row["score_std"]
            row["width"], row["censored"] = _width(lrs, members, lo, hi)
            row["width_grid"], row["censored_grid"] = _width(lrs, members, lrs[0], lrs[-1])
        rows.append(row)
    return rows


def _decades(width: float, censored: bool) -> str:
    if not math.isfinite(width):
        return "–"
    return f"{'≥ ' if censored else ''}{width:.1f}"


def tolerance_text(tolerance: float, spec: FigureSpec) -> str:
    if spec.score.tolerance == "relative":
        return f"×{1 + tolerance:g}"  # within a factor of the best
    return f"{tolerance:g} {spec.score.unit}"


def width_rows(table: pd.DataFrame, spec: FigureSpec, label) -> list[list[str]]:
    """The width table of one spec as rows of text cells (see `markdown`); `label` names a method."""
    out = []
    for (figure, method, variant), rows in table.groupby(
        ["figure", "method", "variant"], sort=False
    ):
        first = rows.iloc[0]
        if math.isfinite(first["best_score"]):
            best = (
                f"{spec.score_text(first['best_score'], first['best_std'])} ({first['best_lr']:g})"
            )
        else:
            best = "–"
        cells = [
            f"{_decades(r.width, bool(r.censored))} ({_decades(r.width_grid, bool(r.censored_grid))})"
            for r in rows.itertuples()
        ]
        lr_range = f"{first['lr_low']:g} – {first['lr_high']:g}"
        out.append([figure, label(method), variant, best, *cells, lr_range])
    return out


def markdown(tables: list[tuple[pd.DataFrame, FigureSpec]], label) -> str:
    """One markdown table of widths for several figures with the same tolerances."""
    spec = tables[0][1]
    tols = [tolerance_text(t, spec) for t in spec.score.tolerances]
    header = ["figure", "method", "variant", "best final score (lr)", *tols, "lr range compared"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for table, one in tables:
        lines += ["| " + " | ".join(cells) + " |" for cells in width_rows(table, one, label)]
    return "\n".join(lines) + "\n"
