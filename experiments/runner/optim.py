"""Optimizers and learning-rate schedules from their config nodes (configs/optimizer/, configs/schedule/).

Both are Hydra `_target_` + `_partial_: true` nodes. Keys that describe the choice rather than parametrise
the constructor (`name`, and a schedule's `interval`) are dropped before instantiation.

Which parameters weight decay applies to is the run's `weight_decay_exempt` (docs/design.md §3), not an
optimizer hyperparameter: every optimizer takes the same param groups.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

log = logging.getLogger(__name__)

_NOT_CONSTRUCTOR_ARGS = ("name", "interval")
# weight_decay_exempt values: null (the default) gives one group whose every parameter decays
WEIGHT_DECAY_EXEMPT = ("bias_and_norm",)


def _instantiate_partial(node: DictConfig) -> Any:
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()}
    for key in _NOT_CONSTRUCTOR_ARGS:
        kwargs.pop(key, None)
    # _convert_="all": plain lists (betas) in the optimizer's defaults, so state_dict() holds no OmegaConf.
    return hydra.utils.instantiate(kwargs, _convert_="all")


def build_optimizer(
    node: DictConfig,
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
    *,
    weight_decay_exempt: str | None = None,
) -> torch.optim.Optimizer:
    """The optimizer of `node` over a model's parameters (or a list of them); its constructor validates
    the hyperparameters.

    `weight_decay_exempt=None`: one param group, `node.weight_decay` on every parameter.
    `"bias_and_norm"`: the param groups of timm's `create_optimizer_v2` (the recipe of the imagenet_vit
    experiment), built by timm's own `param_groups_weight_decay`: weight decay 0 on biases, on every
    parameter of at most one dimension (the norms' weights) and on the names that the model's
    `no_weight_decay()` lists (a timm ViT's `pos_embed` and `cls_token`); `node.weight_decay` on the rest.
    The decayed group comes first: the loop's step-size diagnostics are param group 0's.
    """
    factory = _instantiate_partial(node)
    if weight_decay_exempt is None:
        params = (
            model_or_params.parameters()
            if isinstance(model_or_params, torch.nn.Module)
            else model_or_params
        )
        return factory(params)
    if weight_decay_exempt not in WEIGHT_DECAY_EXEMPT:
        raise ValueError(
            f"Invalid weight_decay_exempt: {weight_decay_exempt!r} (null or "
            f"{' or '.join(WEIGHT_DECAY_EXEMPT)})"
        )
    if not isinstance(model_or_params, torch.nn.Module):
        raise TypeError("weight_decay_exempt needs the model (parameter names), not its parameters")
    import timm.optim  # ~5 s of imports: only for the runs that ask for it

    model = model_or_params
    groups = timm.optim.param_groups_weight_decay(
        model,
        weight_decay=node.get("weight_decay", 0.0),
        no_weight_decay_list=getattr(model, "no_weight_decay", set)(),
    )
    return factory(sorted(groups, key=lambda group: group["weight_decay"] == 0.0))


def build_schedule(
    node: DictConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> LRScheduler:
    """The lr schedule of `node`; the loop steps it per epoch or per step as `node.interval` says.
    A `total: null` is the run's length in the schedule's intervals (epochs, or optimizer steps)."""
    if node.interval not in ("epoch", "step"):
        raise ValueError(f"Invalid schedule interval: {node.interval!r} (epoch or step)")
    if node.get("total", "absent") is None:
        node = OmegaConf.merge(
            node, {"total": epochs if node.interval == "epoch" else epochs * steps_per_epoch}
        )
    return _instantiate_partial(node)(optimizer)


# Factors are partials of module functions, not lambdas: LambdaLR.state_dict() keeps a partial's
# __dict__ (empty) and a checkpoint can be pickled; the partial itself is rebuilt from the config.
def _cosine_factor(
    t: int, *, warmup: int, total: int, start_factor: float, final_factor: float, prefix: bool
) -> float:
    if t < warmup:
        return start_factor + (1.0 - start_factor) * t / warmup
    start = warmup if prefix else 0
    progress = min(t - start, total - start) / (total - start)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    warmup: int,
    total: int,
    start_factor: float | None = 0.01,
    start_lr: float | None = None,
    final_factor: float = 0.0,
    warmup_prefix: bool = True,
) -> LRScheduler:
    """Linear warmup over `warmup` intervals, then cosine decay to `final_factor * lr` at interval
    `total` (relative to each group's lr, unlike CosineAnnealingLR's absolute eta_min).

    The warmup starts from `start_factor * lr`, or from the absolute `start_lr` (timm's `warmup_lr`;
    give one of the two). `warmup_prefix=True`: the cosine starts where the warmup ends (diffusers'
    get_cosine_schedule_with_warmup); False: the cosine spans all `total` intervals and the warmup
    replaces its first ones (timm's CosineLRScheduler, whose `warmup_prefix` defaults to False).
    A run shorter than its warmup (a smoke run) warms up over all but its last interval."""
    if warmup < 0 or total < 1:
        raise ValueError(
            f"Invalid warmup or total: {warmup}, {total} (need warmup >= 0, total >= 1)"
        )
    if (start_factor is None) == (start_lr is None):
        raise ValueError(
            f"Invalid warmup start: start_factor={start_factor}, start_lr={start_lr} (give one, "
            "the other null)"
        )
    if warmup >= total:
        log.warning("warmup %d >= total %d intervals: warming up over %d", warmup, total, total - 1)
        warmup = total - 1
    base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    if start_lr is not None and not all(lr > 0 for lr in base_lrs):
        raise ValueError(f"Invalid lr for a warmup from start_lr: {base_lrs} (need lr > 0)")
    factors = [
        functools.partial(
            _cosine_factor,
            warmup=warmup,
            total=total,
            start_factor=start_factor if start_lr is None else start_lr / base_lr,
            final_factor=final_factor,
            prefix=warmup_prefix,
        )
        for base_lr in base_lrs
    ]
    return LambdaLR(optimizer, factors)


def _inverse_sqrt_factor(t: int, *, warmup: int) -> float:
    t = t + 1  # LambdaLR counts from 0; the first update is step 1
    return min(t / warmup, math.sqrt(warmup / t))


def warmup_inverse_sqrt(optimizer: torch.optim.Optimizer, *, warmup: int) -> LRScheduler:
    """lr * min(t / warmup, sqrt(warmup / t)) at interval t = 1, 2, ... (fairseq's inverse_sqrt)."""
    if warmup < 1:
        raise ValueError(f"Invalid warmup: {warmup}")
    return LambdaLR(optimizer, functools.partial(_inverse_sqrt_factor, warmup=warmup))
