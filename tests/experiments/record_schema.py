"""The run-record format of docs/design.md §4 as a check, written from the document and not from the
writer (experiments.runner.records), so that every runner's records are held to the same format."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import yaml

RUN_INFO = {  # key: the types its value may have
    "run_id": (str,),
    "experiment": (str,),
    "optimizer": (str,),
    "lr": (int, float),
    "seed": (int,),
    "status": (str,),
    "epochs_done": (int,),
    "final": (dict,),
    "score_name": (str,),
    "higher_is_better": (bool,),
    "wall_time_s": (int, float),
    "git_commit": (str, type(None)),
    "versions": (dict,),
    "device": (dict,),
    "data": (dict,),
    "profile": (str,),
    "error": (str, type(None)),
    "finished_at": (str,),
}
BATCHED = {"members", "group"}  # run.json's optional `batched`: a run trained in a batched group
DEVICE = {"type", "name", "world_size", "amp"}
DATA = {"dataset", "source", "synthetic", "n_train", "n_val"}
METRICS_REQUIRED = ("epoch", "train/loss", "val/loss", "val/score", "lr", "time_s")
METRICS_OTHER = {"model_norm", "grad_norm"}
OPTIM = re.compile(r"optim/((step_size|adaptive_step)_(median|min|max)|cap_fraction|lb_estimate)")
SPLIT_METRIC = re.compile(r"(train|val|test)/[a-z_]+")
TRACE_HEADER = ["step", "epoch", "loss", "lr", "step_size", "adaptive_step", "lb_estimate"]


def check_record(record: Path) -> dict:
    """Assert that `record` is a run directory in the format of docs/design.md §4; returns its run.json."""
    assert sorted(p.name for p in record.iterdir() if p.suffix != ".png") == [
        "config.yaml",
        "metrics.jsonl",
        "run.json",
        "trace.csv",
    ], sorted(p.name for p in record.iterdir())
    info = json.loads((record / "run.json").read_text())
    assert set(info) - {"batched"} == set(RUN_INFO), set(info) ^ set(RUN_INFO)
    if "batched" in info:
        assert set(info["batched"]) == BATCHED and info["batched"]["members"] >= 1
        assert re.fullmatch(r"group-[0-9a-f]{12}", info["batched"]["group"])
    for key, types in RUN_INFO.items():
        assert isinstance(info[key], types), (key, info[key])
    assert info["run_id"] == record.name and re.fullmatch(r"[0-9a-f]{12}", info["run_id"])
    assert info["status"] in ("completed", "diverged", "failed")
    assert (info["error"] is not None) == (info["status"] == "failed")
    if info["error"] is not None:
        assert info["error"].startswith("Traceback"), "error: the traceback of the failure"
    assert set(info["device"]) == DEVICE and info["device"]["amp"] in ("none", "bf16")
    assert info["device"]["type"] in ("cpu", "cuda") and info["device"]["world_size"] >= 1
    assert set(info["data"]) >= DATA and isinstance(info["data"]["synthetic"], bool)
    assert all(isinstance(v, str | type(None)) for v in info["versions"].values())

    config = yaml.safe_load((record / "config.yaml").read_text())
    assert config["experiment"] == info["experiment"] and config["seed"] == info["seed"]
    assert config["optimizer"]["name"] == info["optimizer"]

    lines = (record / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
    assert info["epochs_done"] == len(rows)
    assert info["final"] == (rows[-1] if rows else {})
    for row in rows:
        assert all(key in row for key in METRICS_REQUIRED), row
        for key, value in row.items():
            known = key in METRICS_REQUIRED or key in METRICS_OTHER or OPTIM.fullmatch(key)
            assert known or SPLIT_METRIC.fullmatch(key), f"unknown metric key {key!r}"
            assert value is None or isinstance(value, int | float), (key, value)
            assert value is None or math.isfinite(value), "non-finite numbers are written as null"

    with (record / "trace.csv").open() as f:
        reader = csv.reader(f)
        assert next(reader) == TRACE_HEADER
        trace = list(reader)
    steps = [int(row[0]) for row in trace]
    assert steps == sorted(steps) and all(1 <= int(row[1]) <= len(rows) for row in trace)
    return info
