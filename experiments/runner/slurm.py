"""What the sweep asks of SLURM before and while it submits: does the request fit, and what is queued.

`check_request` compares a launcher profile (configs/hydra/launcher/slurm*.yaml) with the partitions that
`sinfo` reports, so that a job no node can hold is an error at once instead of a job that pends forever
(SLURM's reason `PartitionConfig` or `Resources`, which the launcher does not show). `queued` counts a
sweep's array tasks that wait in `squeue`.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SINFO_FORMAT = (
    "%P|%c|%m|%G|%l|%a"  # partition (default marked *), CPUs, memory MB, gres, time limit, state
)


@dataclass(frozen=True)
class Partition:
    """The largest node of a partition, as `sinfo` reports it."""

    name: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int
    time_limit_min: float  # math.inf: no limit
    up: bool


def read_sinfo() -> str:
    """`sinfo` in SINFO_FORMAT; ValueError where SLURM's commands are not on PATH."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise ValueError(
            "A SLURM launcher needs SLURM's sinfo and sbatch on PATH (run the sweep on a login node; "
            "scripts/local_slurm.sh start runs a single-node cluster on this machine)"
        )
    out = subprocess.run(
        ["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise ValueError(f"sinfo failed: {out.stderr.strip() or out.returncode}")
    return out.stdout


def partitions(sinfo: str) -> dict[str, Partition]:
    """The partitions of `sinfo -h -o SINFO_FORMAT` output, each with its largest node's resources
    (a partition of mixed nodes has one line per kind of node)."""
    found: dict[str, Partition] = {}
    for line in sinfo.splitlines():
        if not line.strip():
            continue
        name, cpus, memory, gres, limit, state = line.strip().split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        part = Partition(
            name=name,
            default=default,
            cpus=_count(cpus),
            memory_mb=_count(memory),
            gpus=gpus_of(gres),
            time_limit_min=minutes(limit),
            up=state.strip().lower() == "up",
        )
        if name in found:
            old = found[name]
            part = Partition(
                name,
                default or old.default,
                max(part.cpus, old.cpus),
                max(part.memory_mb, old.memory_mb),
                max(part.gpus, old.gpus),
                max(part.time_limit_min, old.time_limit_min),
                part.up or old.up,
            )
        found[name] = part
    return found


def _count(text: str) -> int:
    digits = re.match(r"\d+", text.strip())
    return int(digits.group()) if digits else 0


def gpus_of(gres: str) -> int:
    """The GPUs of a node's gres (`gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:2,shard:8`; `(null)`: none)."""
    total = 0
    for entry in gres.split(","):
        entry = entry.split("(")[0].strip()
        if entry.startswith("gpu:"):
            total += _count(entry.rsplit(":", 1)[-1])
    return total


def minutes(limit: str) -> float:
    """A SLURM time limit (`infinite`, `4:00:00`, `1-12:00:00`, `30:00`, `45`) in minutes."""
    limit = limit.strip().lower()
    if limit in ("infinite", "unlimited", "n/a", ""):
        return math.inf
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, mins, secs = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + mins + secs / 60


def check_request(
    launcher: str, request: Mapping[str, Any], available: Mapping[str, Partition]
) -> Partition:
    """The partition the launcher profile submits to; ValueError naming the partition's limits when the
    request (`hydra.launcher` of the composed config) cannot run on any of its nodes."""
    if not available:
        raise ValueError("sinfo lists no partition: is the SLURM controller running?")
    name = request.get("partition")
    if name is None:
        defaults = [p for p in available.values() if p.default]
        if not defaults:
            raise ValueError(
                f"The cluster has no default partition: set hydra.launcher.partition= one of "
                f"{', '.join(available)}"
            )
        part = defaults[0]
    elif name not in available:
        raise ValueError(
            f"Invalid hydra.launcher.partition: {name!r} (this cluster's partitions: "
            f"{', '.join(available)})"
        )
    else:
        part = available[name]
    if not part.up:
        raise ValueError(f"Partition {part.name!r} is not up (sinfo): its jobs would not start")

    cpus = int(request.get("cpus_per_task") or 1) * int(request.get("tasks_per_node") or 1)
    memory_gb = request.get("mem_gb")
    gpus = int(request.get("gpus_per_node") or 0)
    timeout = request.get("timeout_min")
    too_big = []
    if cpus > part.cpus:
        too_big.append(f"{cpus} CPUs (its nodes have at most {part.cpus})")
    if memory_gb is not None and memory_gb * 1024 > part.memory_mb:
        too_big.append(f"{memory_gb} GB (at most {part.memory_mb / 1024:.1f} GB)")
    if gpus > part.gpus:
        too_big.append(f"{gpus} GPU{'s' * (gpus > 1)} (at most {part.gpus})")
    if timeout is not None and timeout > part.time_limit_min:
        too_big.append(f"{timeout} min (its time limit: {part.time_limit_min:g} min)")
    if too_big:
        other = "slurm_cpu" if launcher != "slurm_cpu" else "slurm"
        raise ValueError(
            f"hydra/launcher={launcher} asks partition {part.name!r} for {', '.join(too_big)}: "
            f"its jobs would pend forever. Use LAUNCHER={other}, or override "
            f"hydra.launcher.cpus_per_task, mem_gb, gpus_per_node, timeout_min or partition"
        )
    return part


def queue(job_name: str) -> dict[str, int] | None:
    """The array tasks named `job_name` in SLURM's queue by state (`PENDING`, `RUNNING`, ...); None
    where squeue is not usable."""
    if shutil.which("squeue") is None:
        return None
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", job_name, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        return None
    states: dict[str, int] = {}
    for state in out.stdout.split():
        states[state] = states.get(state, 0) + 1
    return states
