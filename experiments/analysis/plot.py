"""The paper's figures from the summary alone (experiments.analysis.summary; never from run directories).

    python -m experiments.analysis.plot <experiment> [<experiment> ...] [--results-dir results] [--plots-dir plots]
    python -m experiments.analysis.plot fig1        # the analytic illustration, no training

For an experiment, reads its figure spec (configs/figure/<experiment>.yaml), `<results>/<experiment>_summary.csv`
and `_curves.csv` (and, for the step sizes and MoMo*'s bound, `_trace.parquet` and the tidy table), and
writes PNG + PDF under `<plots>/<experiment>/`:
- `robustness` (the paper's methods) and `robustness_extras` (the spec's extras): final training loss (log)
  and score against the lr (log), one column per panel variant, one line per method and line variant,
  mean ± 1 std over seeds (the spec's band); crosses and "k/n" where k of n seeds diverged (at the worst
  edge of the axis when the mean is not finite); the paper's record as open markers where there is one;
- `training_curves` (and `_extras`): the score per epoch of each method's best settings;
- `step_sizes_<optimizer>` and `lb_estimate` (experiments.analysis.plot_steps).
Every call also rewrites `<plots>/best_scores.{md,tex}` from all aggregated experiments.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from experiments import layout
from experiments.analysis import plot_steps, style
from experiments.analysis.fig1 import plot_fig1
from experiments.analysis.spec import FigureSpec, load_spec, value_text
from experiments.analysis.summary import (
    best,
    final,
    read_summary,
    summarise_paper,
    variant_values,
)

log = logging.getLogger(__name__)


def _style_index(value: str, spec: FigureSpec) -> int:
    variant = spec.variant("line")
    declared = [value_text(v) for v in variant.values] if variant else []
    return declared.index(value) % len(style.LINESTYLES) if value in declared else 0


def _panel_title(panel: str, spec: FigureSpec) -> str:
    variant = spec.variant("panel")
    return f"{variant.label} = {panel}" if variant is not None and panel else ""


def _band(mean: np.ndarray, std: np.ndarray, width: float, floor: float | None) -> tuple:
    """mean ± width·std, never below zero (every quantity drawn is non-negative); on a log axis a
    band that reaches zero is cut at `floor`."""
    std = np.nan_to_num(std, nan=0.0)
    low = np.clip(mean - width * std, 0.0, None)
    if floor is not None:
        low = np.maximum(low, floor)
    return low, mean + width * std


def _log_floor(values: pd.Series) -> float:
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min()) / 10.0 if len(positive) else 1e-12


@dataclass
class _Quantity:
    """One quantity of the robustness figure on its axes (the summary's `<column>_mean`/`_std`)."""

    ax: plt.Axes
    column: str  # train_loss | score
    scale: float  # plotted = recorded × scale
    worst_top: bool  # a setting without a mean is marked at the top (a loss) or the bottom edge
    floor: float | None  # on a log axis, where a band that reaches zero stops


def _quantities(spec: FigureSpec, column, rows: pd.DataFrame) -> list[_Quantity]:
    """The training loss (log axis) above the score of one panel column."""
    score_floor = _log_floor(rows["score_mean"] * spec.score.scale) if spec.score.log else None
    return [
        _Quantity(column[0], "train_loss", 1.0, True, _log_floor(rows["train_loss_mean"])),
        _Quantity(
            column[1], "score", spec.score.scale, not spec.score.higher_is_better, score_floor
        ),
    ]


def _draw_setting(
    q: _Quantity, setting: pd.DataFrame, spec: FigureSpec, key: str, i: int, c: str
) -> list[tuple]:
    """One method and line variant over the lrs: line, band; returns its divergence marks."""
    lr = setting["lr"].to_numpy(dtype=float)
    mean = setting[f"{q.column}_mean"].to_numpy(dtype=float) * q.scale
    std = setting[f"{q.column}_std"].to_numpy(dtype=float) * q.scale
    q.ax.plot(lr, mean, ls=style.LINESTYLES[i], marker=style.MARKERS[i], ms=3, color=c, label=key)
    low, high = _band(mean, std, spec.band, q.floor)
    q.ax.fill_between(
        lr, low, high, where=np.isfinite(mean), color=c, alpha=style.BAND_ALPHA, lw=0,
        label=f"band {key}",
    )  # fmt: skip
    diverged = setting[setting["n_diverged"] > 0]
    return [
        (q.ax, r["lr"], r[f"{q.column}_mean"] * q.scale, f"{r['n_diverged']}/{r['n_seeds']}", c)
        for _, r in diverged.astype({"n_diverged": int, "n_seeds": int}).iterrows()
    ]


def _label_axes(quantities: list[_Quantity], spec: FigureSpec, panel: str, first: bool) -> None:
    top, bottom = quantities[0].ax, quantities[1].ax
    top.set(xscale="log", yscale="log", title=_panel_title(panel, spec))
    bottom.set(xscale="log", xlabel="learning rate", yscale="log" if spec.score.log else "linear")
    if first:
        top.set_ylabel(spec.loss.label)
        bottom.set_ylabel(spec.score.label)
    if spec.loss.ylim:
        top.set_ylim(spec.loss.ylim)
    if spec.score.ylim:
        bottom.set_ylim(spec.score.ylim)


def _mark_diverged(marks: list[tuple], quantities: list[_Quantity]) -> None:
    """Crosses where seeds diverged: on the point, or at the axis' worst edge when it has no mean."""
    for quantity in quantities:
        limits = quantity.ax.get_ylim()
        edge = limits[1] if quantity.worst_top else limits[0]
        for ax, lr, y, text, c in marks:
            if ax is not quantity.ax:
                continue
            at = y if math.isfinite(y) else edge
            ax.plot([lr], [at], "x", color=c, ms=6, mew=1.5, clip_on=False, zorder=5)
            ax.annotate(
                text, (lr, at), xytext=(3, 3), textcoords="offset points", fontsize=5.5, color=c
            )
        quantity.ax.set_ylim(limits)


def _legend(
    fig, spec: FigureSpec, methods: list[str], lines: list[str], paper: bool, diverged: bool
) -> None:
    handles = [
        plt.Line2D([], [], color=style.colour(m), marker="o", ms=3, label=style.label(m))
        for m in methods
    ]
    variant = spec.variant("line")
    for value in [v for v in lines if v] if variant is not None else []:
        i = _style_index(value, spec)
        handles.append(
            plt.Line2D(
                [],
                [],
                color="grey",
                ls=style.LINESTYLES[i],
                marker=style.MARKERS[i],
                ms=3,
                label=f"{variant.label} = {value}",
            )
        )
    if paper:
        handles.append(
            plt.Line2D(
                [], [], ls="none", marker="o", mfc="none", color="grey", label="paper record"
            )
        )
    if diverged:
        handles.append(
            plt.Line2D(
                [], [], ls="none", marker="x", mew=1.5, color="grey", label="k/n seeds diverged"
            )
        )
    fig.legend(handles=handles, loc="outside right center", frameon=False)


def draw_robustness(
    summary: pd.DataFrame, spec: FigureSpec, figure: str, paper: pd.DataFrame | None = None
) -> plt.Figure:
    """Final training loss and score against the lr (the paper's main figure), from the final-epoch
    summary; `paper`: the paper's final-epoch summary of the same figure, drawn as open markers."""
    rows = summary[summary["figure"] == figure]
    methods = style.order(rows["method"].unique(), spec.figures()[figure])
    panels, lines = variant_values(rows, spec, "panel"), variant_values(rows, spec, "line")
    marks: list[tuple] = []
    every: list[_Quantity] = []
    with plt.rc_context(style.STYLE):
        fig, axes = plt.subplots(
            2, len(panels), figsize=(3.0 * len(panels) + 1.5, 4.6), sharex="col", sharey="row",
            squeeze=False, layout="constrained",
        )  # fmt: skip
        for col, panel in enumerate(panels):
            quantities = _quantities(spec, axes[:, col], rows)
            every += quantities
            for method, line in itertools.product(methods, lines):
                setting = rows[(rows["panel"] == panel) & (rows["method"] == method)]
                setting = setting[setting["line"] == line].sort_values("lr")
                if setting.empty:
                    continue
                i, c = _style_index(line, spec), style.colour(method)
                for q in quantities:
                    marks += _draw_setting(q, setting, spec, f"{method}|{line}", i, c)
                if paper is not None:
                    _overlay(paper, figure, panel, method, line, quantities, i, c)
            _label_axes(quantities, spec, panel, first=col == 0)
        _mark_diverged(marks, every)
        _legend(fig, spec, methods, lines, paper is not None, bool(marks))
        n = int(rows["n_seeds"].max()) if len(rows) else 0
        spread = f"mean ± {spec.band:g} std over {n} seeds" if n > 1 else "one seed (no band)"
        fig.suptitle(f"{_title(spec, figure)}\nfinal epoch, {spread}", fontsize=8.5)
    return fig


def _title(spec: FigureSpec, figure: str) -> str:
    if figure != spec.experiment and spec.extras is not None:
        return f"{spec.title}\n{spec.extras.title}"
    return spec.title


def _overlay(paper, figure, panel, method, line, quantities, i: int, c: str) -> None:
    ref = paper[(paper["figure"] == figure) & (paper["panel"] == panel)]
    ref = ref[(ref["method"] == method) & (ref["line"] == line)].sort_values("lr")
    for q in quantities:
        q.ax.plot(
            ref["lr"],
            ref[f"{q.column}_mean"] * q.scale,
            ls="none",
            marker=style.MARKERS[i],
            mfc="none",
            mec=c,
            ms=4.5,
            mew=0.8,
            label=f"paper {method}|{line}",
        )


def pick_curves(summary: pd.DataFrame, spec: FigureSpec, n: int) -> pd.DataFrame:
    """The n best settings (lr and line variant) per figure, panel and method by the final score,
    in the score's direction (the lowest MSE, the highest accuracy)."""
    ranked = summary.dropna(subset=["score_mean"]).sort_values(
        "score_mean", ascending=not spec.score.higher_is_better, kind="stable"
    )
    return ranked.groupby(["figure", "panel", "method"], sort=False).head(n)


def _draw_curve(
    ax, curve: pd.DataFrame, pick: pd.Series, rank: int, spec: FigureSpec, floor
) -> None:
    """One setting's score per epoch, fainter with its rank, with its band."""
    mean = curve["score_mean"].to_numpy(dtype=float) * spec.score.scale
    std = curve["score_std"].to_numpy(dtype=float) * spec.score.scale
    i, shade, c = _style_index(pick["line"], spec), 1.0 - 0.28 * rank, style.colour(pick["method"])
    name = f"lr {pick['lr']:g}"
    if pick["line"]:
        name += f", {spec.variant('line').label}={pick['line']}"
    ax.plot(curve["epoch"], mean, ls=style.LINESTYLES[i], color=c, alpha=shade, label=name)
    low, high = _band(mean, std, spec.band, floor)
    ax.fill_between(curve["epoch"], low, high, color=c, alpha=0.1 * shade, lw=0)


def draw_curves(curves: pd.DataFrame, spec: FigureSpec, figure: str) -> plt.Figure:
    """The score per epoch of each method's best settings (one panel per method and panel variant)."""
    rows = curves[curves["figure"] == figure]
    picked = pick_curves(final(rows), spec, spec.curves)
    methods = style.order(rows["method"].unique(), spec.figures()[figure])
    panels = variant_values(rows, spec, "panel")
    floor = _log_floor(rows["score_mean"] * spec.score.scale) if spec.score.log else None
    with plt.rc_context(style.STYLE):
        fig, axes = plt.subplots(
            len(panels),
            len(methods),
            figsize=(2.0 * len(methods) + 0.6, 2.3 * len(panels) + 0.3),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        for (p, panel), (m, method) in itertools.product(enumerate(panels), enumerate(methods)):
            ax = axes[p][m]
            chosen = picked[(picked["panel"] == panel) & (picked["method"] == method)]
            for rank, (_, pick) in enumerate(chosen.iterrows()):
                curve = rows[(rows["panel"] == panel) & (rows["method"] == method)]
                curve = curve[(curve["lr"] == pick["lr"]) & (curve["line"] == pick["line"])]
                _draw_curve(ax, curve.sort_values("epoch"), pick, rank, spec, floor)
            title = style.label(method)
            if _panel_title(panel, spec):
                title += f", {_panel_title(panel, spec)}"
            ax.set(title=title, xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if spec.score.log:
                ax.set_yscale("log")
            ax.legend(frameon=False, loc="best")
        for row in axes:
            row[0].set_ylabel(spec.score.label)
        fig.suptitle(
            f"{_title(spec, figure)}\nthe {spec.curves} best settings of each method by the final "
            f"score, mean ± {spec.band:g} std",
            fontsize=8.5,
        )
    return fig


def _read_summaries(files: layout.AggregatePaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    for path in (files.summary, files.curves):
        if not path.is_file():
            raise FileNotFoundError(
                f"no aggregated runs of {files.experiment} ({path} is missing): "
                f"make aggregate EXPERIMENT={files.experiment} writes it"
            )
    return read_summary(files.summary), read_summary(files.curves)


def paper_summary(spec: FigureSpec, results_dir: Path) -> pd.DataFrame | None:
    """The final-epoch summary of the spec's paper record, or None without one."""
    if spec.paper is None:
        return None
    path = layout.AggregatePaths(Path(results_dir), spec.paper.record).paper
    return final(summarise_paper(pd.read_csv(path), spec)) if path.is_file() else None


def figures(spec: FigureSpec, summary, curves, paper=None) -> dict[str, plt.Figure]:
    """Every summary figure of a spec, by file name (robustness, training_curves, and _extras)."""
    out = {}
    for figure in spec.figures():
        if not (summary["figure"] == figure).any():
            continue
        suffix = "" if figure == spec.experiment else "_extras"
        overlay = paper if paper is not None and spec.paper and spec.paper.overlay else None
        out[f"robustness{suffix}"] = draw_robustness(summary, spec, figure, overlay)
        out[f"training_curves{suffix}"] = draw_curves(curves, spec, figure)
    return out


def plot_experiment(
    experiment: str, results_dir: Path = Path("results"), plots_dir: Path = Path("plots")
) -> list[Path]:
    """Every figure of one experiment from its aggregated tables."""
    spec = load_spec(experiment)
    files = layout.AggregatePaths(Path(results_dir), experiment)
    summary, curves = _read_summaries(files)
    out_dir = Path(plots_dir) / experiment
    drawn = figures(spec, summary, curves, paper_summary(spec, results_dir))
    drawn |= plot_steps.diagnostic_figures(files, summary)
    return [path for name, fig in drawn.items() for path in style.save(fig, out_dir / name)]


def best_score_table(results_dir: Path) -> pd.DataFrame:
    """Best final score (mean ± std over seeds, at the best lr) per method and figure."""
    rows = []
    for experiment in layout.aggregated_experiments(results_dir):
        spec = load_spec(experiment)
        summary, _ = _read_summaries(layout.AggregatePaths(Path(results_dir), experiment))
        for _, r in best(summary, spec).iterrows():
            cell = spec.score_text(r["score_mean"], r["score_std"])
            variant = f" ({r['variant']})" if r["variant"] else ""
            rows.append(
                {"figure": r["figure"], "method": style.label(r["method"]) + variant, "cell": cell}
            )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index="figure", columns="method", values="cell").fillna("")


def write_best_scores(results_dir: Path, plots_dir: Path) -> list[Path]:
    """The best-score table as markdown and LaTeX."""
    table = best_score_table(results_dir)
    if table.empty:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    md, tex = plots_dir / "best_scores.md", plots_dir / "best_scores.tex"
    header = ["figure", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in table.iterrows()]
    md.write_text("\n".join(lines) + "\n")
    tex.write_text(table.to_latex(escape=True))
    return [md, tex]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiments", nargs="+", help="experiment ids, or fig1")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written: list[Path] = []
    try:
        for experiment in args.experiments:
            if experiment == "fig1":
                written += plot_fig1(args.plots_dir / "fig1" / "truncated_model")
            else:
                written += plot_experiment(experiment, args.results_dir, args.plots_dir)
        written += write_best_scores(args.results_dir, args.plots_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"plot: {error}", file=sys.stderr)
        sys.exit(1)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
