"""Data-parallel training: `torchrun --nproc_per_node=2` on gloo equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _toy_task import compose_config

from experiments.runner import distributed, records, train

REPO = Path(__file__).resolve().parents[3]


def test_shard_gives_each_rank_its_contiguous_slice_of_every_tensor() -> None:
    batch = {"x": torch.arange(8).reshape(4, 2), "y": torch.arange(4), "n": 4}
    parts = [distributed.shard(batch, distributed.DistContext(rank, 2)) for rank in range(2)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert parts[1]["y"].tolist() == [2, 3] and parts[1]["n"] == 4
    assert distributed.shard(batch, distributed.DistContext()) is batch
    with pytest.raises(ValueError, match="does not split"):
        distributed.shard({"y": torch.arange(3)}, distributed.DistContext(0, 2))


@pytest.mark.distributed
def test_torchrun_two_ranks_on_gloo_match_the_single_process_run(tmp_path: Path) -> None:
    # MoMo (loss all-reduce) on the MLP of mnist_mlp, smoke profile: batches of 16, 8 per rank.
    overrides = ["experiment=mnist_mlp", "profile=smoke", "optimizer=momo", "seed=2"]
    single = compose_config(*overrides, f"results_dir={tmp_path / 'single'}")
    torch.set_num_threads(1)
    train.train(single)

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "experiments.train", *overrides, f"results_dir={tmp_path / 'ddp'}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    paths = records.run_paths(single)  # the run id does not depend on results_dir
    ddp = tmp_path / "ddp" / "runs" / "mnist_mlp" / paths.run_id
    info = json.loads((ddp / "run.json").read_text())
    assert info["status"] == "completed" and info["device"]["world_size"] == 2
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    reference = [
        json.loads(line) for line in (paths.record / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(rows) == len(reference) == 2
    for row, ref in zip(rows, reference, strict=True):
        for key in ("train/loss", "val/loss", "train/score", "val/score", "model_norm",
                    "grad_norm", "optim/step_size_median", "optim/adaptive_step_median"):  # fmt: skip
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    assert (ddp / "trace.csv").read_text().count("\n") == (
        paths.record / "trace.csv"
    ).read_text().count("\n")
    assert not list((tmp_path / "ddp" / "runs" / "mnist_mlp").glob(".partial/*"))
