"""Run records -> one tidy table per experiment (docs/design.md §4 is the input format).

    python -m experiments.analysis.aggregate <experiment> [--results-dir results] [--tolerances 1 5]

writes, under the results directory:
- `<experiment>.csv` and `.parquet`: one row per run and epoch; run fields, the flattened config (dotted
  keys) and the epoch's metrics as columns. Diverged and failed runs stay in the table.
- `<experiment>_summary.csv`: per method and lr, the final-epoch mean and std over seeds of the metrics
  (completed runs only) and the counts of completed, diverged and failed runs.
- `<experiment>_trace.parquet`: the per-step trace of every run, with the cap lr/rho_k of the step.
- `<experiment>_robustness.csv`: the lr-band widths of experiments.analysis.robustness, also printed.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments import layout
from experiments.analysis.robustness import (
    DEFAULT_TOLERANCES,
    format_robustness,
    robustness_from_seeds,
)

log = logging.getLogger(__name__)

RUN_FIELDS = (
    "run_id",
    "experiment",
    "optimizer",
    "lr",
    "seed",
    "status",
    "epochs_done",
    "score_name",
    "higher_is_better",
    "wall_time_s",
    "profile",
)
METRICS = ("train/loss", "train/score", "val/loss", "val/score")
# Config keys that never tell two settings of a sweep apart.
NOT_A_SETTING = {
    "seed",
    "optimizer.lr",
    "optimizer.name",
    "optimizer._target_",
    "optimizer._partial_",
}


def _flatten_config(config: dict) -> dict:
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    # Lists (betas, milestones) become text so that every column has one scalar type.
    return {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flat.items()}


def read_run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run directory -> (per-epoch rows, per-step trace rows), both carrying the run fields."""
    run = json.loads((path / layout.RUN_INFO).read_text())
    fields = {k: run.get(k) for k in RUN_FIELDS}
    fields["synthetic"] = bool((run.get("data") or {}).get("synthetic", False))
    config = yaml.safe_load((path / layout.CONFIG).read_text()) or {}
    fields.update({k: v for k, v in _flatten_config(config).items() if k not in fields})

    metrics_file = path / layout.METRICS
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    epochs = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    # The epoch's (scheduled) lr is not the run's base lr of run.json.
    epochs = epochs.rename(columns={"lr": "epoch_lr"})
    if epochs.empty:  # a run that failed before its first epoch still gets one row
        epochs = pd.DataFrame({"epoch": [np.nan]})
    epochs = epochs.assign(**{k: [v] * len(epochs) for k, v in fields.items()})

    trace_file = path / layout.TRACE
    trace = pd.read_csv(trace_file) if trace_file.is_file() else pd.DataFrame()
    if not trace.empty:
        trace = trace.assign(
            run_id=fields["run_id"], optimizer=fields["optimizer"], seed=fields["seed"]
        )
        trace["cap"] = trace["lr"] / _rho(config.get("optimizer", {}), trace["step"])
    return epochs, trace


def _rho(optimizer: dict, step: pd.Series) -> pd.Series:
    """rho_k of the cap lr/rho_k: 1 - beta^k when the optimizer bias-corrects its averages, else 1.

    MoMo bias-corrects when `bias_correction` is set; MoMo-Adam always does (its `betas` hold beta1).
    """
    k = step.clip(lower=1)
    if "betas" in optimizer:
        return 1.0 - float(optimizer["betas"][0]) ** k
    if optimizer.get("bias_correction"):
        return 1.0 - float(optimizer["beta"]) ** k
    return pd.Series(1.0, index=step.index)


def _method_labels(table: pd.DataFrame) -> pd.Series:
    """The optimizer name, plus any config value that varies within that optimizer's runs."""
    labels = table["optimizer"].astype(str)
    config_cols = [c for c in table.columns if "." in c and c not in NOT_A_SETTING]
    for name, rows in table.groupby("optimizer"):
        varying = [c for c in config_cols if rows[c].astype(str).nunique(dropna=False) > 1]
        if varying:
            suffix = (
                rows[varying]
                .astype(str)
                .apply(lambda r: ", ".join(f"{c.split('.')[-1]}={v}" for c, v in r.items()), axis=1)
            )
            labels.loc[rows.index] = f"{name} (" + suffix + ")"
    return labels


def build_table(results_dir: Path, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All runs of an experiment -> (tidy per-epoch table, per-step trace table)."""
    parts = [read_run(path) for path in layout.record_dirs(results_dir, experiment)]
    if not parts:
        raise FileNotFoundError(f"No run records under {layout.runs_dir(results_dir, experiment)}")
    table = pd.concat([p[0] for p in parts], ignore_index=True)
    table.insert(0, "method", _method_labels(table))
    traces = [p[1] for p in parts if not p[1].empty]
    trace = pd.concat(traces, ignore_index=True) if traces else pd.DataFrame()
    if not trace.empty:
        methods = table.drop_duplicates("run_id").set_index("run_id")["method"]
        trace.insert(0, "method", trace["run_id"].map(methods))
        trace = trace.merge(
            table.drop_duplicates("run_id")[["run_id", "lr"]], on="run_id", suffixes=("", "_base")
        )
        trace = trace.rename(columns={"lr": "lr_step", "lr_base": "lr"})
    return table, trace


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last recorded epoch. Only completed runs keep their scores."""
    last = table.sort_values("epoch").groupby("run_id", sort=False).tail(1)
    done = last["status"] == "completed"
    last = last.copy()
    last.loc[~done, [m for m in METRICS if m in last]] = np.nan
    return last.sort_values(["method", "lr", "seed"]).reset_index(drop=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and lr: final-epoch mean/std over completed seeds and the status counts."""
    final = final_rows(table)
    metrics = [m for m in METRICS if m in final]
    grouped = final.groupby(["method", "optimizer", "lr"], sort=True)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    counts = grouped["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["completed", "diverged", "failed"], fill_value=0)
    counts.columns = [f"n_{c}" for c in counts.columns]
    return counts.join(stats).reset_index()


def robustness(
    table: pd.DataFrame, tolerances: Sequence[float] = DEFAULT_TOLERANCES
) -> pd.DataFrame:
    """Band widths per method from the per-seed final validation scores (see experiments.analysis.robustness)."""
    final = final_rows(table).rename(columns={"val/score": "score"})
    higher = (
        bool(final["higher_is_better"].dropna().iloc[0])
        if final["higher_is_better"].notna().any()
        else True
    )
    return robustness_from_seeds(
        final[["method", "lr", "seed", "score"]], tolerances, higher_is_better=higher
    )


def aggregate(
    experiment: str,
    results_dir: Path = Path("results"),
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
) -> dict[str, Path]:
    """Write the tables of one experiment; returns their paths by kind."""
    table, trace = build_table(results_dir, experiment)
    files = layout.AggregatePaths(Path(results_dir), experiment)
    out = {
        "table": files.table,
        "parquet": files.parquet,
        "summary": files.summary,
        "robustness": files.robustness,
    }
    table.to_csv(out["table"], index=False)
    table.to_parquet(out["parquet"], index=False)
    summarise(table).to_csv(out["summary"], index=False)
    robustness(table, tolerances).to_csv(out["robustness"], index=False)
    if not trace.empty:
        out["trace"] = files.trace
        trace.to_parquet(out["trace"], index=False)
    log.info("aggregated %d runs of %s", table["run_id"].nunique(), experiment)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=list(DEFAULT_TOLERANCES),
        help="robustness thresholds, in points below each method's best score",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = aggregate(args.experiment, args.results_dir, args.tolerances)
    summary = pd.read_csv(out["summary"])
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(
        f"\nlr robustness: width in decades of the band within tolerance of the best val score"
        f" (95% bootstrap interval over seeds)\n{format_robustness(pd.read_csv(out['robustness']))}"
    )
    for kind, path in out.items():
        print(f"{kind:>10}: {path}")


if __name__ == "__main__":
    main()
