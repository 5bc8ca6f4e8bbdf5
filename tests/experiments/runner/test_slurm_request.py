"""A SLURM launcher profile against the cluster's partitions (`sinfo`), before anything is submitted."""

from __future__ import annotations

import math

import pytest

from experiments.runner import slurm, sweep

# `sinfo -h -o "%P|%c|%m|%G|%l|%a"` of scripts/local_slurm.sh's node, and of a GPU cluster with two kinds
# of GPU node in one partition
LOCAL = "debug*|2|21694|(null)|infinite|up\n"
GPU_CLUSTER = (
    "cpu*|64|256000|(null)|2-00:00:00|up\n"
    "gpu|32|512000|gpu:a100:4(S:0-1)|1-00:00:00|up\n"
    "gpu|48|1024000|gpu:h100:8(S:0-1),shard:8|1-00:00:00|up\n"
    "old|8|16000|gpu:2|4:00:00|down\n"
)


def test_partitions_take_the_largest_node_of_each() -> None:
    found = slurm.partitions(GPU_CLUSTER)
    assert set(found) == {"cpu", "gpu", "old"}
    assert found["cpu"] == slurm.Partition("cpu", True, 64, 256000, 0, 2 * 24 * 60, True)
    assert found["gpu"] == slurm.Partition("gpu", False, 48, 1024000, 8, 24 * 60, True)
    assert not found["old"].up and found["old"].time_limit_min == 240
    assert slurm.partitions(LOCAL)["debug"].time_limit_min == math.inf


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [("infinite", math.inf), ("UNLIMITED", math.inf), ("30", 30), ("30:00", 30),
     ("4:00:00", 240), ("1-12:00:00", 36 * 60)],
)  # fmt: skip
def test_minutes_of_a_slurm_time_limit(limit: str, minutes: float) -> None:
    assert slurm.minutes(limit) == minutes


def _request(**overrides: object) -> dict:
    gpu_profile = {"partition": None, "cpus_per_task": 8, "tasks_per_node": 1, "mem_gb": 32,
                   "gpus_per_node": 1, "timeout_min": 240}  # fmt: skip
    return gpu_profile | overrides


def test_gpu_profile_on_the_local_cluster_names_the_partitions_limits() -> None:
    with pytest.raises(ValueError) as error:
        slurm.check_request("slurm", _request(), slurm.partitions(LOCAL))
    assert str(error.value) == (
        "hydra/launcher=slurm asks partition 'debug' for 8 CPUs (its nodes have at most 2), 32 GB "
        "(at most 21.2 GB), 1 GPU (at most 0): its jobs would pend forever. Use LAUNCHER=slurm_cpu, "
        "or override hydra.launcher.cpus_per_task, mem_gb, gpus_per_node, timeout_min or partition"
    )


def test_requests_that_fit_return_their_partition() -> None:
    local, cluster = slurm.partitions(LOCAL), slurm.partitions(GPU_CLUSTER)
    cpu_profile = _request(cpus_per_task=1, mem_gb=2, gpus_per_node=None, timeout_min=120)
    assert slurm.check_request("slurm_cpu", cpu_profile, local).name == "debug"
    assert slurm.check_request("slurm", _request(partition="gpu"), cluster).name == "gpu"
    assert slurm.check_request("slurm_cpu", cpu_profile, cluster).name == "cpu"  # the default


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_request(partition="gpu", timeout_min=2000), r"2000 min \(its time limit: 1440 min\)"),
        (_request(), r"partition 'cpu' for 1 GPU \(at most 0\)"),
        (_request(partition="gpu", gpus_per_node=16), r"16 GPUs \(at most 8\)"),
        (_request(partition="nope"), r"Invalid hydra.launcher.partition: 'nope' \(this cluster's "
                                     r"partitions: cpu, gpu, old\)"),
        (_request(partition="old", gpus_per_node=None), r"Partition 'old' is not up"),
    ],
)  # fmt: skip
def test_requests_that_cannot_run_say_why(request_: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slurm.check_request("slurm", request_, slurm.partitions(GPU_CLUSTER))


def test_gpus_of_a_gres() -> None:
    assert [slurm.gpus_of(g) for g in ("(null)", "gpu:4", "gpu:a100:4(S:0-1)", "gpu:2,gpu:v100:1")] == [
        0, 4, 4, 3,
    ]  # fmt: skip


def test_check_launcher_reads_the_composed_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep checks what Hydra would submit: the profile with the command line's overrides."""
    monkeypatch.setattr(slurm, "read_sinfo", lambda: LOCAL)
    with pytest.raises(ValueError, match=r"slurm asks partition 'debug' for 8 CPUs"):
        sweep.check_launcher("synthetic_ls", "slurm", [])
    sweep.check_launcher("synthetic_ls", "slurm_cpu", [])
    with pytest.raises(
        ValueError, match=r"slurm_cpu asks partition 'debug' for 4 CPUs .* Use LAUNCHER=slurm,"
    ):
        sweep.check_launcher("synthetic_ls", "slurm_cpu", ["hydra.launcher.cpus_per_task=4"])
    fits = [
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.gpus_per_node=null",
    ]
    sweep.check_launcher("synthetic_ls", "slurm", fits)
