"""Data-parallel training with DDP on 2 CPU processes (gloo): every rank takes the same MoMo step, and the
run equals one process training on the combined batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from momo_problems import mlp, regression_data

from momo import Momo, MomoAdam

STEPS, WORLD, LOCAL_BATCH = 20, 2, 8
# lrs far above the adaptive step, so that tau depends on the loss (a capped step would not)
OPTIMIZERS = {
    "Momo": (Momo, {"lr": 100.0}),
    "MomoAdam": (MomoAdam, {"lr": 10.0, "use_fstar": True}),
}


def batch(step: int, rank: int | None):
    """The combined batch of `step`, or rank `rank`'s shard of it (each rank different data)."""
    X, Y = regression_data(n=STEPS * WORLD * LOCAL_BATCH)
    start = step * WORLD * LOCAL_BATCH
    if rank is not None:
        start += rank * LOCAL_BATCH
        return X[start : start + LOCAL_BATCH], Y[start : start + LOCAL_BATCH]
    return X[start : start + WORLD * LOCAL_BATCH], Y[start : start + WORLD * LOCAL_BATCH]


def train(model, opt, rank: int | None) -> None:
    for step in range(STEPS):
        X, Y = batch(step, rank)
        opt.zero_grad()
        loss = (model(X) - Y).square().mean()
        loss.backward()
        opt.step(loss=loss)


def worker(rank: int, init_file: str, name: str, sync_loss: bool, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(mlp())
        cls, options = OPTIMIZERS[name]
        opt = cls(model.parameters(), sync_loss=sync_loss, **options)
        train(model, opt, rank)
        torch.save(
            [p.detach() for p in model.parameters()], os.path.join(out_dir, f"rank{rank}.pt")
        )
        # Both ranks leave together: a rank that tears gloo down while its peer still has the
        # connection open can abort in gloo's I/O thread ("terminate called without an active
        # exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_data_parallel(name: str, sync_loss: bool, tmp_path) -> list[list[torch.Tensor]]:
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(
        worker, args=(init_file, name, sync_loss, str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_data_parallel_ranks_agree_and_equal_single_process(name, tmp_path):
    rank0, rank1 = run_data_parallel(name, sync_loss=True, tmp_path=tmp_path)
    for a, b in zip(rank0, rank1):
        assert torch.equal(a, b)

    cls, options = OPTIMIZERS[name]
    model = mlp()
    opt = cls(model.parameters(), **options)
    train(model, opt, rank=None)
    assert opt.param_groups[0]["step_size"] < options["lr"]  # the adaptive step, not the cap
    for a, b in zip(rank0, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.distributed
def test_data_parallel_without_loss_sync_drifts_apart(tmp_path):
    """The failure the loss all-reduce prevents: ranks with different local losses take different steps."""
    rank0, rank1 = run_data_parallel("Momo", sync_loss=False, tmp_path=tmp_path)
    assert any(not torch.allclose(a, b) for a, b in zip(rank0, rank1))
