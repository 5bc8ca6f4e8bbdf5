"""fairseq's output in the suite's record format (docs/design.md §4), so that aggregation and plots read
IWSLT14 runs like any other.

- `read_fairseq_log`: the JSON stats lines of `fairseq-train --log-format json` (per log interval and
  per epoch); `parse_bleu`: the test BLEU of `fairseq-generate`;
- `read_step_trace`: the plugin's per-update trace of MoMo's step sizes (the record's TRACE_COLUMNS);
- `epoch_metrics` and `trace_rows`: metrics.jsonl and trace.csv rows, with the same `optim/*` statistics
  as the training loop's (experiments.runner.diagnostics.step_statistics).

Units: losses are fairseq's, label-smoothed cross-entropy in bits per target token (the trace's loss and
lower-bound estimate, which MoMo sees in nats, are converted to match). `val/score` is fairseq's validation
BLEU (0-100); `val/token_acc` its validation token accuracy (`--report-accuracy`: the share of target tokens
whose most likely prediction given the reference prefix is right), logged in percent and recorded in [0, 1].
Epochs count from 1, as fairseq's and the loop's do.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from experiments.runner.diagnostics import DIAGNOSTICS, step_statistics

_BLEU = re.compile(r"\bBLEU4? = ([0-9.]+)")
_LOG_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")

FairseqLog = dict[str, list[dict[str, float]]]


def read_fairseq_log(text: str) -> FairseqLog:
    """The JSON stats lines of a fairseq-train log (`--log-format json`), by kind: train_inner (every
    log interval), train and valid (one per epoch). Values become floats."""
    out: FairseqLog = {"train_inner": [], "train": [], "valid": []}
    for line in text.splitlines():
        match = _LOG_LINE.search(line)
        if match:
            out[match.group(1)].append({k: float(v) for k, v in json.loads(match.group(2)).items()})
    return out


def read_step_trace(path: Path) -> list[dict[str, float]]:
    """The plugin's per-update trace (its `epoch` column is empty: fairseq's log says which update ends
    an epoch); after a resume repeated updates keep their last row. A missing value is NaN."""
    if not path.is_file():
        return []
    with path.open() as f:
        rows = {int(row["step"]): row for row in csv.DictReader(f)}
    return [
        {k: float(v) if v != "" else math.nan for k, v in rows[step].items() if k != "epoch"}
        for step in sorted(rows)
    ]


def in_bits(trace: list[dict[str, float]]) -> list[dict[str, float]]:
    """The trace's loss and lb estimate (MoMo sees nats) in fairseq's logged unit, bits."""
    return [r | {k: r[k] / math.log(2) for k in ("loss", "lb_estimate")} for r in trace]


def parse_bleu(text: str) -> float | None:
    """The corpus BLEU of fairseq-generate's last summary line ("BLEU4 = 34.41, ..." or "BLEU = ...")."""
    scores = _BLEU.findall(text)
    return float(scores[-1]) if scores else None


def epoch_metrics(log: FairseqLog, trace: list[dict[str, float]]) -> list[dict]:
    """One metrics.jsonl row per fairseq epoch, with the optim/ statistics of MoMo's steps in it."""
    valid = {int(row["epoch"]): row for row in log["valid"]}
    rows, first_update = [], 1
    for train in log["train"]:
        epoch, last_update = int(train["epoch"]), int(train["train_num_updates"])
        val = valid.get(epoch, {})
        row = {
            "epoch": epoch,
            "train/loss": train["train_loss"],
            "train/score": None,
            "val/loss": val.get("valid_loss"),
            "val/score": val.get("valid_bleu"),
            "val/token_acc": _fraction(val.get("valid_accuracy")),
            "lr": train["train_lr"],
            "grad_norm": train.get("train_gnorm"),
            "time_s": train.get("train_wall"),
        }
        steps = [r for r in trace if first_update <= r["step"] <= last_update]
        row |= step_statistics(_series(steps))
        rows.append(row)
        first_update = last_update + 1
    return rows


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def _series(steps: list[dict[str, float]]) -> dict[str, list[float]]:
    """The per-step values of each diagnostic; one the optimizer does not have (NaN) is left out."""
    series = {key: [r[key] for r in steps] for key in DIAGNOSTICS}
    return {key: values for key, values in series.items() if not any(map(math.isnan, values))}


def trace_rows(log: FairseqLog, trace: list[dict[str, float]], max_rows: int) -> list[dict]:
    """trace.csv rows: MoMo's per-update trace when there is one, else fairseq's train_inner lines (lr and
    loss every log interval); thinned to about max_rows."""
    ends = [(int(t["train_num_updates"]), int(t["epoch"])) for t in log["train"]]

    def epoch_of(update: int) -> int:
        return next((e for last, e in ends if update <= last), ends[-1][1] if ends else 1)

    if trace:
        rows = [
            {
                "step": int(r["step"]),
                "loss": r["loss"],
                "lr": r["lr"],
                **{key: None if math.isnan(r[key]) else r[key] for key in DIAGNOSTICS},
            }
            for r in trace
        ]
    else:
        rows = [
            {"step": int(r["num_updates"]), "loss": r["loss"], "lr": r["lr"]}
            for r in log["train_inner"]
        ]
    every = max(1, math.ceil(len(rows) / max_rows))
    return [{**row, "epoch": epoch_of(row["step"])} for row in rows[::every]]
