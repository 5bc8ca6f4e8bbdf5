"""Data-parallel training under `torchrun` (DDP), and nothing at all without it.

Every rank draws the same shuffled batches (the data generator has the same seed on every rank) and keeps
its own contiguous shard of each, so the global batch, its order and its mean loss are those of the
single-process run. DDP averages the gradients; MoMo averages the loss itself (`sync_loss=True`), so every
rank computes the same step size. Rank 0 writes the record, the checkpoint and the W&B run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_map


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> DistContext:
    """Joins the process group that torchrun describes in the environment; a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The model the loss is computed with: DDP under torchrun, the model itself otherwise."""
    if not ctx.enabled:
        return model
    device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def shard(batch: Any, ctx: DistContext) -> Any:
    """This rank's contiguous slice (dim 0) of every tensor in the batch; the batch size must divide."""
    if not ctx.enabled:
        return batch

    def slice_rows(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if x.shape[0] % ctx.world_size:
            raise ValueError(f"Batch of {x.shape[0]} does not split over {ctx.world_size} ranks")
        return x.chunk(ctx.world_size)[ctx.rank]

    return tree_map(slice_rows, batch)


def all_mean(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean over ranks (a copy), or `x` itself without torchrun."""
    if not ctx.enabled:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / ctx.world_size


def all_sum(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """The sums over ranks of 0-dim tensors (in float64), or `values` itself without torchrun."""
    if not ctx.enabled:
        return values
    stacked = torch.stack([value.double() for value in values.values()])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(values, stacked.unbind(), strict=True))


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
