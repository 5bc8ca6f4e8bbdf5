"""Run records: one directory per run, written once (docs/design.md §4), where experiments.layout says.

A record is assembled in a staging directory and renamed into place; an unfinished run keeps a per-epoch
checkpoint beside the records. Non-finite numbers are written as JSON `null` (strict JSON that every reader
accepts); the run's status says whether it diverged. A finished record (completed or diverged) is never
replaced, and one process at a time holds a run id (`run_lock`). Every function here takes one run's
paths, so a runner that trains several runs at once calls them per run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments import layout
from experiments.layout import RunPaths
from experiments.runner.diagnostics import TRACE_COLUMNS
from experiments.runner.identity import run_id

log = logging.getLogger(__name__)


FINISHED = ("completed", "diverged")  # a rerun of such a record returns at once; `failed` is rerun
_DISTRIBUTIONS = (
    "momo-suite",
    "torch",
    "torchvision",
    "numpy",
    "hydra-core",
    "omegaconf",
    "timm",
    "pytorch-optimizer",
    "wandb",
)


class NotWritableError(PermissionError):
    """The results directory cannot take a record; raised before anything trains."""


def run_paths(cfg: DictConfig) -> RunPaths:
    """The paths of the run that `cfg` describes."""
    return RunPaths(Path(cfg.results_dir), cfg.experiment, run_id(cfg))


def read_info(paths: RunPaths) -> dict | None:
    """The run.json of the record, whatever its status; None without a record."""
    try:
        return json.loads(paths.info.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_record(paths: RunPaths) -> dict | None:
    """The run.json of the finished record (completed or diverged), else None."""
    info = read_info(paths)
    return info if info is not None and info.get("status") in FINISHED else None


def write_record(
    paths: RunPaths,
    *,
    config: DictConfig,
    metrics: list[dict],
    trace: list[dict],
    info: dict,
    artefacts: Callable[[Path], None] | None = None,
) -> Path:
    """Assembles the record in a staging directory and renames it into place, replacing a failed
    record but never a finished one (FileExistsError). `artefacts(staging_dir)` may add files of its
    own (a task's sample grid) before the rename. The caller holds the run's `run_lock`."""
    if (finished := read_record(paths)) is not None:
        raise FileExistsError(
            f"{paths.record} is {finished['status']} already: a finished record is never replaced"
        )
    staging = paths.staging(os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if artefacts is not None:
        artefacts(staging)
    (staging / layout.CONFIG).write_text(OmegaConf.to_yaml(config, resolve=True))
    with open(staging / layout.METRICS, "w") as f:
        f.writelines(_json_line(row) for row in metrics)
    with open(staging / layout.TRACE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRACE_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in trace)
    (staging / layout.RUN_INFO).write_text(
        json.dumps(_finite_or_none(info), indent=2, allow_nan=False, default=str) + "\n"
    )
    shutil.rmtree(paths.record, ignore_errors=True)  # only a failed record can be here
    os.rename(staging, paths.record)
    _remove_if_empty(staging.parent)
    return paths.record


@contextlib.contextmanager
def run_lock(paths: RunPaths, *, patience_s: float = 1.0) -> Iterator[None]:
    """The exclusive lock of one run id, held for the `with` block: one process trains a run at a time.

    An flock on `paths.lock`, which the kernel releases when its holder exits, killed or not, so a lock is
    never stale. A second process with the same run id logs once who holds it (pid and host, written into
    the lock file) and waits; it then finds the record that the first one wrote (or its checkpoint, if
    the first was killed). `patience_s`: how long a busy lock is retried quietly first (a status probe,
    `is_running`, holds it for microseconds). Creating the lock file is also the check that the results
    directory is writable: NotWritableError, before anything trains."""
    with _open_lock(paths) as lock_file:
        if not _lock_within(lock_file, patience_s):
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            log.warning(
                "run %s is being trained by %s (lock %s); waiting for it to finish",
                paths.run_id,
                holder,
                paths.lock,
            )
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        with _holding(lock_file):
            yield


@contextlib.contextmanager
def try_run_lock(paths: RunPaths) -> Iterator[bool]:
    """`run_lock` without the wait: yields True holding the run's lock, or False (holding nothing) when
    another process holds it. For a runner with other runs to train meanwhile (a batched group)."""
    with _open_lock(paths) as lock_file:
        if not _lock_within(lock_file, 0.0):
            yield False
            return
        with _holding(lock_file):
            yield True


def _open_lock(paths: RunPaths) -> Any:
    try:
        paths.lock.parent.mkdir(parents=True, exist_ok=True)
        return open(paths.lock, "a+")  # the caller's `with` closes it
    except OSError as error:
        raise NotWritableError(
            f"Results directory {paths.results_dir} is not writable ({error.strerror}: "
            f"{error.filename}); choose another with results_dir=<path>",
        ) from error


@contextlib.contextmanager
def _holding(lock_file: Any) -> Iterator[None]:
    """Signs the locked file with this process's pid and host; unlocks on leaving."""
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock_file.flush()
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


def _lock_within(lock_file: Any, patience_s: float) -> bool:
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def is_running(paths: RunPaths) -> bool:
    """Whether a process holds the run's lock now (a probe of microseconds; never waits)."""
    try:
        lock_file = open(paths.lock)  # noqa: SIM115
    except OSError:
        return False
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


def save_checkpoint(paths: RunPaths, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then an atomic rename: a kill never leaves half a checkpoint."""
    paths.partial.mkdir(parents=True, exist_ok=True)
    tmp = paths.checkpoint.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, paths.checkpoint)


def load_checkpoint(paths: RunPaths) -> dict[str, Any] | None:
    if not paths.checkpoint.exists():
        return None
    # weights_only=False: the checkpoint holds RNG states and Python objects that we wrote ourselves.
    return torch.load(paths.checkpoint, map_location="cpu", weights_only=False)


def remove_checkpoint(paths: RunPaths) -> None:
    shutil.rmtree(paths.partial, ignore_errors=True)
    _remove_if_empty(paths.partial.parent)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another run of the experiment is using it
        directory.rmdir()


def run_info(
    cfg: DictConfig,
    *,
    status: str,
    metrics: list[dict],
    score_name: str,
    higher_is_better: bool,
    wall_time_s: float,
    device: dict,
    data: dict,
    error: str | None,
    versions: Sequence[str] = (),
) -> dict:
    """The run.json of docs/design.md §4, for the training loop and for every workload runner alike.

    `metrics` are the run's metrics.jsonl rows, `device` a `device_info`, `data` the data description
    (the task's `data_info`), `error` the traceback of a failed run, `versions` distributions to record
    besides the suite's own."""
    return {
        "run_id": run_id(cfg),
        "experiment": cfg.experiment,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "seed": cfg.seed,
        "status": status,
        "epochs_done": len(metrics),
        "final": metrics[-1] if metrics else {},
        "score_name": score_name,
        "higher_is_better": higher_is_better,
        "wall_time_s": wall_time_s,
        "git_commit": git_commit(),
        "versions": package_versions(*versions),
        "device": device,
        "data": data,
        "profile": cfg.profile.name,
        "error": error,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def device_info(device: torch.device, *, world_size: int, amp: str) -> dict:
    """run.json's `device`: the device type and name, the number of processes, the autocast dtype."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"type": device.type, "name": name, "world_size": world_size, "amp": amp}


def git_commit() -> str | None:
    """HEAD of the repository that holds this code, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions(*extra: str) -> dict[str, str | None]:
    """The installed versions of the suite's distributions and of `extra` ones (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in (*_DISTRIBUTIONS, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _json_line(row: dict) -> str:
    return json.dumps(_finite_or_none(row), allow_nan=False) + "\n"
