"""Read what an offline W&B run wrote (`<WANDB_DIR>/wandb/offline-run-*/run-<id>.wandb`), so that tests
assert the run's identity and history instead of grepping bytes.

The file is W&B's transaction log: a 7-byte header (`:W&B`, magic, version), then LevelDB-style log blocks
of 32 KiB holding chunks (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) of
serialised `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run_id: str
    group: str
    job_type: str
    name: str
    tags: list[str]
    config: dict
    history: list[dict] = field(default_factory=list)  # one dict per `run.log` call


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"not a W&B log: {path}"
    out, pending, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The run's identity, config and logged rows from one offline-run directory."""
    (log_file,) = run_dir.glob("run-*.wandb")
    run: OfflineRun | None = None
    config: dict = {}
    history: list[dict] = []
    for record in records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(r.run_id, r.run_group, r.job_type, r.display_name, list(r.tags), {})
            config |= _config(r.config)
        elif kind == "config":
            config |= _config(record.config)
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            history.append({k: v for k, v in row.items() if not k.startswith("_")})
    assert run is not None, f"no run record in {log_file}"
    run.config, run.history = config, history
    return run


def _key(item: wandb_internal_pb2.HistoryItem) -> str:
    return item.key or "/".join(item.nested_key)


def _config(config: wandb_internal_pb2.ConfigRecord) -> dict:
    return {
        item.key: json.loads(item.value_json)
        for item in config.update
        if item.key and not item.key.startswith("_")
    }


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under `wandb_dir` (the $WANDB_DIR of the test), oldest first."""
    return [read_offline_run(d) for d in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
