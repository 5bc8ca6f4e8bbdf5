"""The paper's figures from the aggregated tables (never from run directories).

    python -m experiments.analysis.plot <experiment> [<experiment> ...] [--results-dir results] [--plots-dir plots]
    python -m experiments.analysis.plot fig1        # the analytic illustration, no training

For an experiment, reads `<results>/<experiment>.parquet` (and `_trace.parquet`, and the paper's record
`<results>/paper/<experiment>.csv` when there is one) and writes PNG + PDF under `<plots>/<experiment>/`:
- `robustness`: final train loss (log) and val score against lr (log), mean over seeds with a 2-std band;
  diverged settings as crosses on the axis; the paper's curve dashed; band widths in the legend;
- `training_curves`: val score per epoch for the three best lrs of each method;
- `step_sizes_<optimizer>`: the adaptive step t1 per iteration, its per-epoch median and the cap, per lr;
- `lb_estimate`: the MoMo* lower-bound estimate against the training loss (when recorded).
Every call also rewrites `<plots>/best_scores.{md,tex}` from all aggregated tables in `<results>`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments import layout
from experiments.analysis.aggregate import final_rows, summarise
from experiments.analysis.robustness import (
    DEFAULT_TOLERANCES,
    paper_final,
    robustness_from_paper,
    robustness_from_seeds,
)

log = logging.getLogger(__name__)

# The paper's method colours (docs/experiments.md, Figures). Keys are optimizer names with '-' for '_'.
COLOURS = {
    "momo": "#023047",
    "momo-adam": "#3F88C5",
    "sgd-m": "#de9151",
    "adam": "#f34213",
    "adamw": "#f34213",
    "momo-star": "#87b37a",
    "momo-adam-star": "#648381",
    "prox-sps": "#97BF88",
    "adabelief": "#FFBF46",
    "adabound": "#4f9d69",
    "lion": "#dbabab",
}
LABELS = {
    "momo": "MoMo",
    "momo-adam": "MoMo-Adam",
    "sgd-m": "SGD-M",
    "adam": "Adam",
    "adamw": "AdamW",
    "momo-star": "MoMo*",
    "momo-adam-star": "MoMo-Adam*",
    "prox-sps": "Prox-SPS",
    "adabelief": "AdaBelief",
    "adabound": "AdaBound",
    "lion": "Lion",
}
ORDER = list(COLOURS)
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "savefig.bbox": "tight",
    "savefig.dpi": 200,
}


def _key(name: str) -> str:
    return str(name).replace("_", "-")


def colour(name: str) -> str:
    return COLOURS.get(_key(name), "#555555")


def label(method: str) -> str:
    """'momo_adam (weight_decay=0.0001)' -> 'MoMo-Adam (weight_decay=0.0001)'."""
    base, _, rest = str(method).partition(" ")
    return (LABELS.get(_key(base), base) + (" " + rest if rest else "")).strip()


def _methods(table: pd.DataFrame) -> list[str]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(table["method"].unique(), key=lambda m: (rank.get(_key(m.split(" ")[0]), 99), m))


def _save(fig: plt.Figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for file in out:
        fig.savefig(file)
    plt.close(fig)
    return out


def _score_axis(table: pd.DataFrame) -> tuple[str, float]:
    """The score's axis label and the factor that turns it into points (percent for accuracies)."""
    name = (
        str(table["score_name"].dropna().iloc[0]) if table["score_name"].notna().any() else "score"
    )
    return (f"val {name} (%)", 100.0) if name == "acc" else (f"val {name}", 1.0)


def plot_robustness(
    table: pd.DataFrame,
    path: Path,
    paper: pd.DataFrame | None = None,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
) -> list[Path]:
    """Final train loss and val score against lr, one line per method (the paper's main figure)."""
    summary = summarise(table)
    final = final_rows(table).rename(columns={"val/score": "score"})
    higher = (
        bool(final["higher_is_better"].dropna().iloc[0])
        if final["higher_is_better"].notna().any()
        else True
    )
    rob = robustness_from_seeds(
        final[["method", "lr", "seed", "score"]], tolerances, higher_is_better=higher
    )
    score_label, points = _score_axis(table)
    paper_last = paper_final(paper) if paper is not None else None
    paper_rob = robustness_from_paper(paper, tolerances) if paper is not None else None

    diverged: dict[str, pd.Series] = {}
    with plt.rc_context(STYLE):
        fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(7.2, 2.7), layout="constrained")
        for method in _methods(table):
            rows = summary[summary["method"] == method].sort_values("lr")
            c = colour(method.split(" ")[0])
            bands = " | ".join(f"{w:.1f}" for w in rob.loc[rob["method"] == method, "width"])
            ok = rows["n_completed"] > 0
            for ax, metric, scale in (
                (ax_loss, "train/loss", 1.0),
                (ax_score, "val/score", points),
            ):
                mean = rows[f"{metric}_mean"] * scale
                std = rows[f"{metric}_std"].fillna(0.0) * scale
                # A log axis cannot show mean - 2 std <= 0: floor the band at a hundredth of the mean.
                low = (mean - 2 * std).clip(lower=mean * 1e-2) if ax is ax_loss else mean - 2 * std
                ax.plot(
                    rows["lr"][ok],
                    mean[ok],
                    "o-",
                    color=c,
                    ms=3,
                    label=f"{label(method)}  [{bands}]",
                )
                ax.fill_between(
                    rows["lr"][ok], low[ok], (mean + 2 * std)[ok], color=c, alpha=0.18, lw=0
                )
            if (rows["n_diverged"] > 0).any():
                diverged[c] = rows["lr"][rows["n_diverged"] > 0]
            if paper_last is not None:
                ref = paper_last[paper_last["method"].map(_key) == _key(method)].sort_values("lr")
                ax_loss.plot(ref["lr"], ref["train_loss"], "--", color=c, lw=0.9, alpha=0.8)
                ax_score.plot(
                    ref["lr"], ref["val_score"] * points, "--", color=c, lw=0.9, alpha=0.8
                )
        ax_loss.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final train loss")
        ax_score.set(xscale="log", xlabel="learning rate", ylabel=f"final {score_label}")
        # Diverged settings sit on the axis: loss off the top, score off the bottom.
        for ax, edge in ((ax_loss, 1), (ax_score, 0)):
            limits = ax.get_ylim()
            for c, lrs in diverged.items():
                ax.plot(lrs, [limits[edge]] * len(lrs), "x", color=c, ms=6, mew=1.5, clip_on=False)
            ax.set_ylim(limits)
        handles, labels = ax_score.get_legend_handles_labels()
        if paper_last is not None:
            handles.append(plt.Line2D([], [], ls="--", color="grey", lw=0.9))
            labels.append("paper record")
        handles.append(plt.Line2D([], [], ls="none", marker="x", color="grey", mew=1.5))
        labels.append("diverged")
        tol = " | ".join(f"{t:g}" for t in tolerances)
        fig.legend(
            handles,
            labels,
            loc="outside right center",
            frameon=False,
            title=f"good-lr band, decades\n(within {tol} pt of best)",
            title_fontsize=7,
        )
        if paper_rob is not None:
            ours = {_key(m.split(" ")[0]) for m in table["method"]}
            bands = ", ".join(
                f"{label(m)} {' | '.join(f'{w:.1f}' for w in r['width'])}"
                for m, r in paper_rob.groupby("method")
                if _key(m) in ours
            )
            fig.supxlabel(f"paper record bands: {bands}", fontsize=6.5, color="#444444")
        experiment = str(table["experiment"].iloc[0])
        fig.suptitle(f"{experiment}: final epoch, mean over seeds ± 2 std", fontsize=8.5)
        return _save(fig, path)


def plot_training_curves(table: pd.DataFrame, path: Path, n_best: int = 3) -> list[Path]:
    """Val score per epoch for the n best lrs of each method (by final mean val score)."""
    summary = summarise(table)
    score_label, points = _score_axis(table)
    methods = _methods(table)
    done = table[table["status"] == "completed"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1,
            len(methods),
            figsize=(1.9 * len(methods) + 0.6, 2.5),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        for ax, method in zip(axes[0], methods, strict=True):
            rows = summary[summary["method"] == method].dropna(subset=["val/score_mean"])
            best = rows.nlargest(n_best, "val/score_mean")["lr"]
            for rank, lr in enumerate(sorted(best)):
                runs = done[(done["method"] == method) & (done["lr"] == lr)]
                curve = runs.groupby("epoch")["val/score"].agg(["mean", "std"]).fillna(0.0) * points
                shade = 1.0 - 0.3 * rank
                c = colour(method.split(" ")[0])
                ax.plot(curve.index, curve["mean"], color=c, alpha=shade, label=f"lr {lr:g}")
                ax.fill_between(
                    curve.index,
                    curve["mean"] - 2 * curve["std"],
                    curve["mean"] + 2 * curve["std"],
                    color=c,
                    alpha=0.12 * shade,
                    lw=0,
                )
            ax.set(title=label(method), xlabel="epoch")
            ax.legend(frameon=False, loc="lower right")
        axes[0][0].set_ylabel(score_label)
        return _save(fig, path)


def plot_step_sizes(trace: pd.DataFrame, path: Path, optimizer: str) -> list[Path]:
    """Adaptive step t1 per iteration (dots), its per-epoch median and the cap lr/rho, one panel per lr."""
    runs = trace[(trace["optimizer"] == optimizer) & trace["adaptive_step"].notna()]
    runs = runs[runs["seed"] == runs["seed"].min()]  # one seed: the panels show a single trajectory
    lrs = sorted(runs["lr"].unique())
    ncols = min(4, len(lrs))
    nrows = -(-len(lrs) // ncols)
    c = colour(optimizer)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(1.8 * ncols + 0.5, 1.7 * nrows + 0.4),
            sharex=True,
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        for ax, lr in zip(axes.flat, lrs, strict=False):
            run = runs[runs["lr"] == lr].sort_values("step")
            t1 = run["adaptive_step"].clip(lower=1e-12)
            ax.scatter(
                run["step"],
                t1,
                s=1.5,
                color="#9a9a9a",
                alpha=0.5,
                lw=0,
                rasterized=True,
                label="$t_1$",
            )
            median = run.groupby("epoch").agg(
                step=("step", "median"), t1=("adaptive_step", "median")
            )
            ax.plot(
                median["step"],
                median["t1"].clip(lower=1e-12),
                color=c,
                marker="o",
                ms=2.5,
                label="epoch median",
            )
            ax.plot(run["step"], run["cap"], color="black", lw=1.0, label=r"cap $\alpha/\rho_k$")
            ax.set(yscale="log", title=f"lr = {lr:g}")
        for ax in axes.flat[len(lrs) :]:
            ax.set_visible(False)
        # The lowest visible panel of each column carries the x axis.
        for col in range(ncols):
            lowest = axes[(len(lrs) - 1 - col) // ncols, col]
            lowest.xaxis.set_tick_params(labelbottom=True)
            lowest.set_xlabel("iteration")
        for ax in axes[:, 0]:
            ax.set_ylabel("step size")
        axes.flat[0].legend(frameon=False, loc="lower left", markerscale=3)
        fig.suptitle(f"{label(optimizer)}: adaptive step sizes", fontsize=8.5)
        return _save(fig, path)


def plot_lb_estimate(table: pd.DataFrame, path: Path) -> list[Path]:
    """Train loss per epoch of every method at its best lr, and the MoMo* lower-bound estimates."""
    summary = summarise(table).dropna(subset=["train/loss_mean"])
    best = summary.loc[summary.groupby("method")["train/loss_mean"].idxmin(), ["method", "lr"]]
    runs = table.merge(best, on=["method", "lr"])
    with plt.rc_context(STYLE):
        fig, (ax_loss, ax_lb) = plt.subplots(1, 2, figsize=(7.2, 2.6), layout="constrained")
        for method in _methods(runs):
            rows = runs[runs["method"] == method]
            curve = rows.groupby("epoch")[["train/loss", "optim/lb_estimate"]].mean()
            c = colour(method.split(" ")[0])
            lr = rows["lr"].iloc[0]
            ax_loss.plot(
                curve.index, curve["train/loss"], color=c, label=f"{label(method)} (lr {lr:g})"
            )
            if curve["optim/lb_estimate"].notna().any():
                ax_lb.plot(
                    curve.index,
                    curve["optim/lb_estimate"],
                    color=c,
                    ls="--",
                    label=f"{label(method)}: lb estimate",
                )
                ax_lb.plot(
                    curve.index, curve["train/loss"], color=c, label=f"{label(method)}: train loss"
                )
        ax_loss.set(
            yscale="log", xlabel="epoch", ylabel="train loss", title="train loss at the best lr"
        )
        ax_lb.set(xlabel="epoch", title="MoMo*: lower-bound estimate vs loss")
        # symlog: the estimate may be negative (a wrong initial bound) while the loss spans decades;
        # linear only below a tenth of the smallest magnitude plotted
        magnitudes = [abs(y) for line in ax_lb.get_lines() for y in line.get_ydata() if y]
        ax_lb.set_yscale("symlog", linthresh=0.1 * min(magnitudes, default=1.0))
        ax_lb.axhline(0.0, color="black", lw=0.6)
        ax_loss.legend(frameon=False)
        ax_lb.legend(frameon=False)
        return _save(fig, path)


def best_score_table(results_dir: Path) -> pd.DataFrame:
    """Best final val score (mean ± std over seeds, at the best lr) per method and experiment."""
    rows = []
    for experiment in layout.aggregated_experiments(results_dir):
        table = pd.read_parquet(layout.AggregatePaths(Path(results_dir), experiment).parquet)
        _, points = _score_axis(table)
        higher = (
            bool(table["higher_is_better"].dropna().iloc[0])
            if table["higher_is_better"].notna().any()
            else True
        )
        summary = summarise(table).dropna(subset=["val/score_mean"])
        by_method = summary.groupby("method")["val/score_mean"]
        best = summary.loc[by_method.idxmax() if higher else by_method.idxmin()]
        for _, r in best.iterrows():
            mean, std = r["val/score_mean"] * points, np.nan_to_num(r["val/score_std"]) * points
            rows.append(
                {
                    "experiment": experiment,
                    "method": label(r["method"]),
                    "cell": f"{mean:.2f} ± {std:.2f}",
                }
            )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index="experiment", columns="method", values="cell").fillna("")


def write_best_scores(results_dir: Path, plots_dir: Path) -> list[Path]:
    """The best-score table as markdown and LaTeX."""
    table = best_score_table(results_dir)
    if table.empty:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    md, tex = plots_dir / "best_scores.md", plots_dir / "best_scores.tex"
    md.write_text(_markdown(table))
    tex.write_text(table.to_latex(escape=True))
    return [md, tex]


def _markdown(table: pd.DataFrame) -> str:
    header = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def plot_fig1(path: Path, alpha: float = 5.0, beta: float = 0.9) -> list[Path]:
    """Fig. 1: the truncated model max{averaged linearisation, f_*} on two 1-D losses (no training).

    The past iterates come from a few SGD-M steps with a small lr; from the last one, SGD-M with lr
    alpha follows the averaged gradient all the way, MoMo stops where the model reaches f_* = 0.
    """
    losses = {
        "$f(x) = x^2/2$": (lambda x: 0.5 * x**2, lambda x: x, 0.04),
        r"$f(x) = \log\cosh(x)$": (lambda x: np.log(np.cosh(x)), lambda x: np.tanh(x), 0.1),
    }
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6), layout="constrained")
        for ax, (title, (f, g, warmup_lr)) in zip(axes, losses.items(), strict=True):
            x, fbar, d, gamma, path_x = 3.0, None, None, None, []
            for _ in range(10):  # SGD-M warm-up with a small lr: the memory of the averages
                fx, gx = f(x), g(x)
                if fbar is None:
                    fbar, d, gamma = fx, gx, gx * x
                else:
                    fbar = beta * fbar + (1 - beta) * fx
                    d = beta * d + (1 - beta) * gx
                    gamma = beta * gamma + (1 - beta) * gx * x
                path_x.append(x)
                x = x - warmup_lr * d
            x = path_x[-1]
            t1 = max(fbar + d * x - gamma, 0.0) / d**2
            x_momo, x_sgdm = x - min(alpha, t1) * d, x - alpha * d
            grid = np.linspace(min(x_sgdm, -1.0) - 0.5, 3.5, 400)
            ax.plot(grid, f(grid), color="black", lw=1.2, label="loss $f$")
            ax.plot(
                grid,
                np.maximum(fbar + d * grid - gamma, 0.0),  # the model, truncated at f_* = 0
                color="#3F88C5",
                lw=1.4,
                label="MoMo model (truncated at $f_*$)",
            )
            ax.scatter(
                path_x, f(np.array(path_x)), s=10, color="#9a9a9a", zorder=3, label="past iterates"
            )
            ax.scatter([x], [f(x)], s=22, color="black", zorder=4, label="$x_k$")
            for x_next, c, name in ((x_momo, "#023047", "MoMo"), (x_sgdm, "#de9151", "SGD-M")):
                ax.axvline(x_next, color=c, ls="--", lw=0.9)
                ax.scatter(
                    [x_next],
                    [f(x_next)],
                    s=40,
                    marker="*",
                    color=c,
                    zorder=4,
                    label=f"{name} $x_{{k+1}}$",
                )
            ax.set(title=title, xlabel="x", ylim=(-0.3, 1.3 * f(3.5)))
        axes[0].legend(frameon=False, loc="upper center")
        fig.suptitle(rf"One step from $x_k$ with learning rate $\alpha$ = {alpha:g}", fontsize=8.5)
        return _save(fig, path)


def plot_experiment(
    experiment: str, results_dir: Path = Path("results"), plots_dir: Path = Path("plots")
) -> list[Path]:
    """Every figure of one experiment from its aggregated tables."""
    files, out_dir = (
        layout.AggregatePaths(Path(results_dir), experiment),
        Path(plots_dir) / experiment,
    )
    table = pd.read_parquet(files.parquet)
    paper = pd.read_csv(files.paper) if files.paper.is_file() else None
    written = plot_robustness(table, out_dir / "robustness", paper)
    written += plot_training_curves(table, out_dir / "training_curves")
    if files.trace.is_file():
        trace = pd.read_parquet(files.trace)
        for optimizer in sorted(trace.loc[trace["adaptive_step"].notna(), "optimizer"].unique()):
            written += plot_step_sizes(trace, out_dir / f"step_sizes_{optimizer}", optimizer)
    if "optim/lb_estimate" in table and table["optim/lb_estimate"].notna().any():
        written += plot_lb_estimate(table, out_dir / "lb_estimate")
    return written


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
    for experiment in args.experiments:
        if experiment == "fig1":
            written += plot_fig1(args.plots_dir / "fig1" / "truncated_model")
        else:
            written += plot_experiment(experiment, args.results_dir, args.plots_dir)
    written += write_best_scores(args.results_dir, args.plots_dir)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
