"""The summary format: what every figure is drawn from, made alike from our runs and the paper's records.

One row per (figure, method, variant, lr, epoch):

    figure       the figure id: the experiment (the paper's methods) or <experiment>_extras
    method       the optimizer config name: momo, momo_adam, sgd_m, adam, ...
    variant      the swept settings the figure shows besides the lr, as text ("λ=0.0001, lb=0.9"; "")
    panel, line  the values of the figure spec's panel and line variants (spec.value_text; "" if none)
    lr           the (base) learning rate
    epoch        1 .. the protocol's epochs
    n_seeds      seeds of this setting (the paper's: as its README says)
    n_diverged   of them, how many had diverged by this epoch
    train_loss_mean, train_loss_std, score_mean, score_std
                 mean and standard deviation (ddof 1) over the seeds of the spec's loss and score
                 (recorded units: an accuracy in [0, 1]; the spec's scale turns it into the plotted %)

`final` keeps the last epoch: the `<experiment>_summary.csv` that the robustness figure, the widths and
the best-score table read; the training curves read all epochs (`<experiment>_curves.csv`).

Every seed counts, as in the paper's records: a diverged run keeps its last recorded values for the
epochs after it stopped, so a setting's mean and std are over all its seeds, and a non-finite value of
any seed (the NaN training loss of a diverged run) makes the mean non-finite. The paper's records hold
only seed means and stds; there, a NaN mean of the training loss marks divergence, and the number of
diverged seeds is read as all of them when the std is NaN too (fewer than two finite seeds), else one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments.analysis.selection import is_scientific
from experiments.analysis.spec import FigureSpec, value_text

COLUMNS = (
    "figure",
    "method",
    "variant",
    "panel",
    "line",
    "lr",
    "epoch",
    "n_seeds",
    "n_diverged",
    "train_loss_mean",
    "train_loss_std",
    "score_mean",
    "score_std",
)
SETTING = ["method", "panel", "line", "lr"]
_NOT_A_SETTING = {"seed", "optimizer.lr", "optimizer.name"}
_TOP_LEVEL_SETTINGS = ("epochs", "amp")


def _variant_columns(frame: pd.DataFrame, spec: FigureSpec, source: str) -> pd.DataFrame:
    """Adds `panel`, `line` and `variant` from the spec's variants (source: key or paper column)."""
    frame = frame.copy()
    parts = []
    for role in ("panel", "line"):
        variant = spec.variant(role)
        column = None if variant is None else (variant.key if source == "key" else variant.paper)
        values = frame[column] if column in frame else pd.Series("", index=frame.index)
        frame[role] = values.map(value_text)
        if variant is not None:
            parts.append(frame[role].map(lambda v, name=variant.label: f"{name}={v}" if v else ""))
    joined = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=frame.index)
    frame["variant"] = joined.apply(lambda r: ", ".join(v for v in r if v), axis=1) if parts else ""
    return frame


def _check_settings(table: pd.DataFrame, spec: FigureSpec) -> None:
    """Runs pooled into one setting must differ only in their seed (and the spec's coupled keys)."""
    declared = {v.key for v in spec.variants} | set(spec.coupled) | _NOT_A_SETTING
    config = [
        c
        for c in table.columns
        if ("." in c or c in _TOP_LEVEL_SETTINGS) and is_scientific(c) and c not in declared
    ]
    runs = table.drop_duplicates("run_id")
    for setting, rows in runs.groupby(SETTING, sort=True):
        varying = [c for c in config if rows[c].astype(str).nunique(dropna=False) > 1]
        if varying:
            raise ValueError(
                f"runs of {setting[0]} at lr {setting[3]:g} differ in {', '.join(varying)}: declare "
                f"it in configs/figure/{spec.experiment}.yaml as a variant or as coupled to the lr"
            )


def _per_seed_epochs(table: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    """Every finished run over epochs 1..E; a diverged run keeps its last row after it stopped."""
    done = table[table["status"].isin(("completed", "diverged")) & table["epoch"].notna()]
    epochs = int(done["epochs"].max()) if "epochs" in done else int(done["epoch"].max())
    rows = []
    for _, run in done.groupby("run_id", sort=False):
        run = run.sort_values("epoch").set_index("epoch")
        full = run.reindex(pd.Index(range(1, epochs + 1), name="epoch"), method="ffill")
        rows.append(full.reset_index())
    out = pd.concat(rows, ignore_index=True)
    out["diverged_by"] = (out["status"] == "diverged") & (out["epochs_done"] <= out["epoch"])
    return out


def _mean_std(grouped: pd.core.groupby.DataFrameGroupBy, column: str) -> pd.DataFrame:
    """Mean and std over seeds in which a non-finite seed makes both non-finite."""
    values = grouped[column]
    has_nan = values.apply(lambda s: bool(s.isna().any()))
    mean, std = values.mean(), values.std(ddof=1)
    return pd.DataFrame({"mean": mean.mask(has_nan), "std": std.mask(has_nan)})


def _by_figure(curves: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    parts = [
        curves[curves["method"].isin(methods)].assign(figure=figure)
        for figure, methods in spec.figures().items()
    ]
    out = pd.concat(parts, ignore_index=True)
    return out.loc[:, list(COLUMNS)].sort_values(["figure", *SETTING, "epoch"], ignore_index=True)


def summarise_runs(table: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    """The tidy table of a sweep's runs (experiments.analysis.runs) -> the summary, every epoch."""
    for key in (spec.score.key, spec.loss.key):
        if key not in table or table[key].isna().all():
            raise ValueError(
                f"no run of {spec.experiment} records {key} "
                f"(the metric configs/figure/{spec.experiment}.yaml draws)"
            )
    if spec.score.key == "val/score" and table["higher_is_better"].notna().any():
        recorded = bool(table["higher_is_better"].dropna().iloc[0])
        if recorded != spec.score.higher_is_better:
            raise ValueError(
                f"the runs of {spec.experiment} say higher_is_better={recorded}, "
                f"configs/figure/{spec.experiment}.yaml says {spec.score.higher_is_better}"
            )
    table = _variant_columns(table, spec, source="key")
    _check_settings(table, spec)
    seeds = _per_seed_epochs(table, spec)
    grouped = seeds.groupby([*SETTING, "variant", "epoch"], sort=True)
    loss, score = _mean_std(grouped, spec.loss.key), _mean_std(grouped, spec.score.key)
    curves = pd.DataFrame(
        {
            "n_seeds": grouped.size(),
            "n_diverged": grouped["diverged_by"].sum(),
            "train_loss_mean": loss["mean"],
            "train_loss_std": loss["std"],
            "score_mean": score["mean"],
            "score_std": score["std"],
        }
    ).reset_index()
    return _by_figure(curves, spec)


def summarise_paper(records: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    """A paper record (results/paper/<record>.csv: seed means per setting and epoch) -> the summary."""
    if spec.paper is None:
        raise ValueError(f"configs/figure/{spec.experiment}.yaml names no paper record")
    rows = records.copy()
    for column, value in spec.paper.keep.items():
        rows = rows[rows[column].astype(str) == str(value)]
    rows = _variant_columns(rows, spec, source="paper")
    rows["method"] = rows["name"].str.replace("-", "_")
    rows["epoch"] = rows["epoch"] + 1  # the records count epochs from 0
    duplicated = rows.duplicated([*SETTING, "epoch"])
    if duplicated.any():
        first = rows[duplicated].iloc[0]
        raise ValueError(
            f"the paper record {spec.paper.record} has several rows for {first['method']} at lr "
            f"{first['lr']:g} ({first['variant'] or 'no variant'}): add a filter to paper.keep"
        )
    loss, score = spec.loss.key.replace("/", "_"), spec.score.key.replace("/", "_")
    n = spec.paper.seeds
    diverged = rows[loss].isna()
    rows["n_seeds"] = n
    rows["n_diverged"] = np.where(diverged, np.where(rows[f"{loss}_std"].isna(), n, 1), 0)
    rows["train_loss_mean"], rows["train_loss_std"] = rows[loss], rows[f"{loss}_std"]
    rows["score_mean"], rows["score_std"] = rows[score], rows[f"{score}_std"]
    return _by_figure(rows, spec)


def variant_values(rows: pd.DataFrame, spec: FigureSpec, role: str) -> list[str]:
    """The values of the panel or line variant present in `rows`: the spec's order, then the others."""
    variant = spec.variant(role)
    declared = [value_text(v) for v in variant.values] if variant else []
    present = [str(v) for v in rows[role].unique()]
    return [v for v in declared if v in present] + sorted(v for v in present if v not in declared)


def read_summary(path: Path) -> pd.DataFrame:
    """A summary CSV as written (`_summary.csv`, `_curves.csv`): variant values stay text, "" if none."""
    text = {"figure": str, "method": str, "variant": str, "panel": str, "line": str}
    frame = pd.read_csv(path, dtype=text, keep_default_na=False, na_values={"lr": [""]})
    for column in COLUMNS[5:]:
        frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
    return frame.loc[:, list(COLUMNS)]


def final(curves: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of every setting: the summary the robustness figure and the widths read."""
    last = curves.groupby(["figure", *SETTING])["epoch"].transform("max")
    return curves[curves["epoch"] == last].reset_index(drop=True)


def best(summary: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    """Per figure, method and variant, the row of the best final score (by the score's direction)."""
    rows = summary.dropna(subset=["score_mean"])
    order = rows.sort_values("score_mean", ascending=not spec.score.higher_is_better, kind="stable")
    return order.drop_duplicates(["figure", "method", "variant"]).sort_values(
        ["figure", "method", "variant"], ignore_index=True
    )
