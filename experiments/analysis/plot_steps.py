"""The optimizer's own figures from the aggregated tables: step sizes per iteration, MoMo*'s lower bound.

- `step_sizes_<optimizer>`: the adaptive step t1 per iteration (dots), its per-epoch median and the cap
  lr/rho_k (for a scheduled run, the schedule), one panel per lr, from `<experiment>_trace.parquet`;
- `lb_estimate`: the training loss per epoch of every method at its best lr (lowest final training loss
  in the summary) and MoMo*'s lower-bound estimate against it, from the tidy table;
- `effective_step`: the step each method takes against its knob (the lr), one panel per method with a
  step-size diagnostic (MoMo's tau, the learning-rate-free peers' d·lr, scheduled lr or eta:
  experiments/runner/peers.py), the knob itself dashed (the step of SGD-M and Adam), from the tidy table;
- `effective_step_trace`: that step per iteration, one line per knob value, from the trace.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
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


def _panels(n: int, ncols: int = 5, width: float = 1.9, height: float = 1.7):
    """A grid of n log-log panels sharing nothing, the unused ones hidden."""
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols + 0.5, height * nrows + 0.5), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def effective_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and knob value: the mean and std over seeds of each run's last-epoch median step
    (`optim/step_size_median`); every seed counts, a diverged one with its last recorded epoch."""
    last = table.sort_values("epoch").groupby("run_id").tail(1)
    last = last.dropna(subset=["optim/step_size_median"])
    by_lr = last.groupby(["method", "lr"])["optim/step_size_median"]
    return by_lr.agg(mean="mean", std="std", seeds="count").reset_index()


def draw_effective_steps(table: pd.DataFrame, order: list[str]) -> plt.Figure:
    """The step each method takes against its knob, a panel per method with a step-size diagnostic:
    `effective_steps` as a line with a mean ± 1 std band (cut at a tenth of the smallest mean on the
    log axis), the knob itself dashed (the step of SGD-M and Adam, which have no panel)."""
    steps = effective_steps(table)
    shown = style.order(steps["method"].unique(), order)
    with plt.rc_context(style.STYLE):
        fig, axes = _panels(len(shown))
        for ax, method in zip(axes, shown, strict=True):
            rows = steps[steps["method"] == method].sort_values("lr")
            c = style.colour(method)
            mean, std = rows["mean"].to_numpy(), rows["std"].fillna(0.0).to_numpy()
            floor = 0.1 * mean[mean > 0].min() if (mean > 0).any() else 1e-12
            ax.plot(rows["lr"], rows["lr"], ls="--", lw=0.8, color="grey", label="the knob")
            ax.fill_between(
                rows["lr"], np.maximum(mean - std, floor), mean + std, color=c,
                alpha=style.BAND_ALPHA, label=f"band {method}",
            )  # fmt: skip
            ax.plot(rows["lr"], mean, color=c, marker="o", ms=3, label=method)
            ax.set(xscale="log", yscale="log", title=style.label(method), xlabel="knob (lr)")
        axes[0].set_ylabel("step size, last epoch")
        axes[0].legend(
            handles=axes[0].get_lines(), labels=["the knob", "step taken"], frameon=False,
            loc="upper left",
        )  # fmt: skip
        fig.suptitle(
            "The step taken against the knob: MoMo's τ, Prodigy's and D-Adaptation's d·lr "
            "(D-Adapt-SGD: d·lr/‖g₀‖), Schedule-Free's warmed-up lr, DoG's η;\nmedian of the last "
            "epoch's steps, mean ± 1 std over seeds; dashed: the knob, the step of SGD-M and Adam",
            fontsize=8.5,
        )
    return fig


def draw_step_traces(trace: pd.DataFrame, order: list[str]) -> plt.Figure:
    """The step per iteration of one seed, a panel per method, a line per knob value (dark: small)."""
    runs = trace[trace["step_size"].notna()]
    shown = style.order(runs["method"].unique(), order)
    with plt.rc_context(style.STYLE):
        fig, axes = _panels(len(shown))
        for ax, method in zip(axes, shown, strict=True):
            rows = runs[runs["method"] == method]
            rows = rows[rows["seed"] == rows["seed"].min()]
            lrs = sorted(rows["lr"].unique())
            for i, lr in enumerate(lrs):
                run = rows[rows["lr"] == lr].sort_values("step")
                shade = plt.cm.viridis(i / max(1, len(lrs) - 1))
                ax.plot(run["step"], run["step_size"].clip(lower=1e-12), color=shade, lw=0.9,
                        label=f"{lr:g}")  # fmt: skip
            ax.set(yscale="log", title=style.label(method), xlabel="iteration")
            ax.legend(frameon=False, fontsize=5, title="knob", title_fontsize=5, loc="best")
        axes[0].set_ylabel("step size")
        fig.suptitle("The step taken per iteration, one seed, a line per knob value", fontsize=8.5)
    return fig


def diagnostic_figures(
    files: layout.AggregatePaths, summary: pd.DataFrame, order: list[str] | None = None
) -> dict[str, plt.Figure]:
    """By file name: the step-size figure of every optimizer with adaptive steps, MoMo*'s bound, and
    the effective steps of every method with a step-size diagnostic, its panels in `order` (a spec's
    methods; default: the style's order)."""
    out = {}
    order = order or list(style.COLOURS)
    if files.trace.is_file():
        trace = pd.read_parquet(files.trace)
        for optimizer in sorted(trace.loc[trace["adaptive_step"].notna(), "optimizer"].unique()):
            out[f"step_sizes_{optimizer}"] = draw_step_sizes(trace, optimizer)
        if "step_size" in trace and trace["step_size"].notna().any():
            out["effective_step_trace"] = draw_step_traces(trace, order)
    if files.parquet.is_file():
        table = pd.read_parquet(files.parquet)
        if "optim/lb_estimate" in table and table["optim/lb_estimate"].notna().any():
            out["lb_estimate"] = draw_lb_estimate(table, summary)
        step = "optim/step_size_median"
        if step in table and table[step].notna().any():
            out["effective_step"] = draw_effective_steps(table, order)
    return out
