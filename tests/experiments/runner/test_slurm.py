"""LAUNCHER=slurm end to end on a real single-node SLURM cluster (scripts/local_slurm.sh).

sbatch of a job array through hydra-submitit-launcher, and a job requeued while it runs: it must resume
from the runner's checkpoint and leave one completed record. Skipped where SLURM cannot be started.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# slow as well: minutes, so only `-m slurm` (make test-slurm) runs it.
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SWEEP = """
experiment: fashion_mnist_mlp
params:
  seed: [0]
optimizers:
  sgd_m:
    optimizer.lr: [0.01, 0.1]
"""
EPOCHS = 1000  # smoke-profile epochs take 0.01-0.05 s: the requeue must land mid-run


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or shutil.which("bash") is None:
        pytest.skip("starting a local SLURM cluster needs root")
    start = subprocess.run(
        ["bash", str(ROOT / "scripts/local_slurm.sh"), "start"], capture_output=True, text=True
    )
    if start.returncode != 0:
        pytest.skip(f"SLURM cannot be started here: {start.stderr.strip()[-500:]}")
    yield
    # The cluster stays up for other slurm tests; `scripts/local_slurm.sh stop` ends it.


def _records(results: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in (results / "runs" / "fashion_mnist_mlp").glob("*/run.json")
    ]


def _running_array_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True)
    return [line for line in out.stdout.split() if "_" in line]


def test_slurm_sweep_job_array_with_a_requeued_run(cluster, tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    command = [
        sys.executable, "-m", "experiments.runner.sweep", "fashion_mnist_mlp", "--file", str(tmp_path / "sweep.yaml"),
        "--launcher", "slurm", "profile=smoke", f"epochs={EPOCHS}", f"results_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path}/multirun", "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20",
    ]  # fmt: skip
    sweep = subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    # Requeue one array task once its run has written a checkpoint: it is killed and starts again.
    partial = tmp_path / "runs" / "fashion_mnist_mlp" / ".partial"
    requeued = None
    deadline = time.monotonic() + 300
    while requeued is None and time.monotonic() < deadline and sweep.poll() is None:
        tasks = _running_array_tasks()
        if tasks and list(partial.glob("*/checkpoint.pt")):
            requeued = tasks[0]
            subprocess.run(["scontrol", "requeue", requeued], check=True)
        time.sleep(0.2)
    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-3000:]
    assert requeued is not None, "no array task was running with a checkpoint to requeue"

    records = _records(tmp_path)
    assert len(records) == 2
    assert all(r["status"] == "completed" and r["epochs_done"] == EPOCHS for r in records)
    logs = "\n".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "multirun").rglob("*")
        if p.suffix in (".out", ".err", ".log")
    )
    assert "resumes after epoch" in logs  # the requeued run continued from its checkpoint
    assert "_0" in requeued or "_1" in requeued  # it was a task of one job array
