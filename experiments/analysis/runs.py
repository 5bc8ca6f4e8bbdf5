"""Run records -> one tidy table per experiment (docs/design.md §4 is the input format).

`build_table` reads the selected record directories (experiments.analysis.selection) into one row per run
and epoch: the run fields of run.json, the flattened config (dotted keys) and the epoch's metrics (the
keys of metrics.jsonl; the epoch's scheduled lr as `epoch_lr`, the run's base lr as `lr`). A run that
failed before its first epoch keeps one row without metrics. The per-step traces become one table with
the cap lr/rho_k of each step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments import layout

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


def _flatten_config(config: dict) -> dict:
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
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
    for column in epochs.select_dtypes(include="object").columns:
        # A metric that is null (non-finite) in every epoch of this run is still a number.
        if epochs[column].map(lambda v: v is None or isinstance(v, int | float)).all():
            epochs[column] = epochs[column].astype(float)
    # The epoch's (scheduled) lr is not the run's base lr of run.json.
    epochs = epochs.rename(columns={"lr": "epoch_lr"})
    if epochs.empty:  # a run that failed before its first epoch still gets one row
        epochs = pd.DataFrame({"epoch": [np.nan]})
    epochs = epochs.assign(**{k: [v] * len(epochs) for k, v in fields.items()})

    trace_file = path / layout.TRACE
    trace = pd.read_csv(trace_file) if trace_file.is_file() else pd.DataFrame()
    if not trace.empty:
        trace = trace.assign(run_id=fields["run_id"], optimizer=fields["optimizer"])
        trace = trace.assign(seed=fields["seed"], lr_base=fields["lr"])
        trace["cap"] = trace["lr"] / _rho(config.get("optimizer", {}), trace["step"])
        trace = trace.rename(columns={"lr": "lr_step", "lr_base": "lr"})
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


def build_table(record_dirs: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Record directories -> (tidy per-epoch table, per-step trace table); `method` is the optimizer."""
    parts = [read_run(Path(path)) for path in record_dirs]
    if not parts:
        raise ValueError("no run records to tabulate")
    table = pd.concat([p[0] for p in parts], ignore_index=True)
    table.insert(0, "method", table["optimizer"])
    traces = [p[1] for p in parts if not p[1].empty]
    trace = pd.concat(traces, ignore_index=True) if traces else pd.DataFrame()
    if not trace.empty:
        trace.insert(0, "method", trace["optimizer"])
    return table, trace
