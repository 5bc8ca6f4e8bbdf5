"""LAUNCHER=slurm_cpu end to end on a real single-node SLURM cluster (scripts/local_slurm.sh).

sbatch of a job array through hydra-submitit-launcher, and a job requeued while it runs: it must resume
from the runner's checkpoint and leave one completed record. The GPU profile is refused before anything is
submitted. The cluster keeps job accounting, so submitit reads job states from sacct without warnings.
Skipped where SLURM cannot be started; the daemons that the tests started are stopped after them.
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
    script = ["bash", str(ROOT / "scripts/local_slurm.sh")]
    before = subprocess.run([*script, "status"], capture_output=True, text=True)
    start = subprocess.run([*script, "start"], capture_output=True, text=True)
    if start.returncode != 0:
        subprocess.run([*script, "stop"], capture_output=True)
        pytest.skip(f"SLURM cannot be started here: {start.stderr.strip()[-500:]}")
    yield
    # Stop the daemons that this module started (munged, mariadbd, slurmdbd, slurmctld, slurmd), and
    # only those: a cluster (or munged) that ran before the tests keeps running.
    if before.returncode == 0:
        return
    stop = subprocess.run([*script, "stop"], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    after = subprocess.run([*script, "status"], capture_output=True, text=True)
    assert _running(after.stdout) == _running(before.stdout), after.stdout


def _running(status: str) -> set[str]:
    return {line.split()[1] for line in status.splitlines() if line.startswith("running ")}


def _records(results: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in (results / "runs" / "fashion_mnist_mlp").glob("*/run.json")
    ]


def _running_array_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True)
    return [line for line in out.stdout.split() if "_" in line]


def _sweep(tmp_path: Path, launcher: str, *extra: str) -> list[str]:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return [
        sys.executable, "-m", "experiments.runner.sweep", "fashion_mnist_mlp", "--file", str(tmp_path / "sweep.yaml"),
        "--launcher", launcher, "profile=smoke", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun",
        *extra,
    ]  # fmt: skip


def test_slurm_sweep_job_array_with_a_requeued_run(cluster, tmp_path):
    # one run per array task (--sequential): a batched sweep would train both runs as one group job
    command = _sweep(tmp_path, "slurm_cpu", f"epochs={EPOCHS}", "--sequential")
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
    assert "Bypassing sacct error" not in output  # accounting: submitit reads the jobs' states
    assert ": 2/2 done (2 completed, 0 diverged), 0 failed, 0 running, 0 queued;" in output


def test_slurm_gpu_profile_on_a_cpu_cluster_is_refused_before_submitting(cluster, tmp_path):
    result = subprocess.run(
        _sweep(tmp_path, "slurm"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "error: hydra/launcher=slurm asks partition 'debug' for 8 CPUs (its nodes have at most "
    )
    assert "Use LAUNCHER=slurm_cpu" in result.stderr
    assert not (tmp_path / "multirun").exists()  # nothing was submitted
