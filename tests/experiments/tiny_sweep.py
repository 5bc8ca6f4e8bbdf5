"""The tiny sweep that the sweep and batched-group tests run through the real CLI: 8 smoke runs
(MoMo and SGD-M, two lrs each, seeds 0 and 1) of fashion_mnist_mlp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = """
experiment: fashion_mnist_mlp
params:
  seed: [0, 1]
optimizers:
  momo:
    optimizer.lr: [0.1, 10.0]
  sgd_m:
    optimizer.lr: [0.01, 0.1]
"""


def run_tiny_sweep(
    tmp_path: Path, *args: str, background: bool = False, **kwargs
) -> subprocess.Popen | subprocess.CompletedProcess:
    """`python -m experiments.runner.sweep` on TINY (written to tmp_path/tiny.yaml) with results in
    tmp_path; `background`: a Popen in its own session, else the finished run with its output."""
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY)
    command = [
        sys.executable, "-m", "experiments.runner.sweep", "fashion_mnist_mlp", "--file", str(sweep_file),
        "profile=smoke", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun", *args,
    ]  # fmt: skip
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=ENV, start_new_session=True, **kwargs)
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)
