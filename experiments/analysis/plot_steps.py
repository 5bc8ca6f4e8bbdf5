"""The optimizer's own figures from the aggregated tables: step sizes per iteration, MoMo*'s lower bound.

- `step_sizes_<optimizer>`: the adaptive step t1 per iteration (dots), its per-epoch median and the cap
  lr/rho_k (for a scheduled run, the schedule), one panel per lr, from `<experiment>_trace.parquet`;
- `lb_estimate`: the training loss per epoch of every method at its best lr (lowest final training loss
  in the summary) and MoMo*'s lower-bound estimate against it, from the tidy table.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from experiments import layout
from experiments.analysis import style


def draw_step_sizes(trace: pd.DataFrame, optimizer: str) -> plt.Figure:
    """Adaptive step t1 per iteration (dots), its per-epoch median and the cap lr/rho, one panel per lr."""
    runs = trace[(trace["optimizer"] == optimizer) & trace["adaptive_step"].notna()]
    runs = runs[runs["seed"] == runs["seed"].min()]  # one seed: the panels show a single trajectory
    lrs = sorted(runs["lr"].unique())
    ncols = min(4, len(lrs))
    nrows = -(-len(lrs) // ncols)
    c = style.colour(optimizer)
    with plt.rc_context(style.STYLE):
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
        fig.suptitle(f"{style.label(optimizer)}: adaptive step sizes", fontsize=8.5)
    return fig


def draw_lb_estimate(table: pd.DataFrame, summary: pd.DataFrame) -> plt.Figure:
    """Train loss per epoch of every method at its best lr, and the MoMo* lower-bound estimates."""
    rows = summary.dropna(subset=["train_loss_mean"]).drop_duplicates(["method", "variant", "lr"])
    best = rows.loc[rows.groupby("method")["train_loss_mean"].idxmin(), ["method", "lr"]]
    runs = table.merge(best, on=["method", "lr"])
    with plt.rc_context(style.STYLE):
        fig, (ax_loss, ax_lb) = plt.subplots(1, 2, figsize=(7.2, 2.6), layout="constrained")
        for method in style.order(runs["method"].unique(), list(style.COLOURS)):
            rows = runs[runs["method"] == method]
            curve = rows.groupby("epoch")[["train/loss", "optim/lb_estimate"]].mean()
            c, name = style.colour(method), style.label(method)
            lr = rows["lr"].iloc[0]
            ax_loss.plot(curve.index, curve["train/loss"], color=c, label=f"{name} (lr {lr:g})")
            if curve["optim/lb_estimate"].notna().any():
                ax_lb.plot(
                    curve.index,
                    curve["optim/lb_estimate"],
                    color=c,
                    ls="--",
                    label=f"{name}: lb estimate",
                )
                ax_lb.plot(curve.index, curve["train/loss"], color=c, label=f"{name}: train loss")
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
    return fig


def diagnostic_figures(
    files: layout.AggregatePaths, summary: pd.DataFrame
) -> dict[str, plt.Figure]:
    """By file name: the step-size figure of every optimizer with adaptive steps, MoMo*'s bound."""
    out = {}
    if files.trace.is_file():
        trace = pd.read_parquet(files.trace)
        for optimizer in sorted(trace.loc[trace["adaptive_step"].notna(), "optimizer"].unique()):
            out[f"step_sizes_{optimizer}"] = draw_step_sizes(trace, optimizer)
    if files.parquet.is_file():
        table = pd.read_parquet(files.parquet)
        if "optim/lb_estimate" in table and table["optim/lb_estimate"].notna().any():
            out["lb_estimate"] = draw_lb_estimate(table, summary)
    return out
