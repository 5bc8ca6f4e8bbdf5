"""Building blocks of the fast paths of Momo and MomoAdam.

Every scalar here is a 0-dim tensor on the parameters' device: nothing is read back to the host, so a step
never waits for the device and traces under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


@functools.cache
def compile_kernel(kernel: F) -> F:
    """The kernel as one compiled graph. ``dynamic=False``: every tensor keeps its static shape (the
    fastest loops), so a new set of parameters with gradients compiles a new graph, while the
    hyperparameters, fed as tensors, never do."""
    return torch.compile(kernel, fullgraph=True, dynamic=False)  # type: ignore[return-value]


def as_scalar_tensors(values: list[float], like: Tensor) -> list[Tensor]:
    """Per-group hyperparameters as 0-dim tensors of the scalars' dtype and device, so that a compiled
    graph takes them as inputs: a Python float would be a constant of the graph (a new lr, a new graph).
    ``torch.full`` fills on the device: no host-to-device copy."""
    return [torch.full((), float(v), dtype=like.dtype, device=like.device) for v in values]


def flat(groups: list[list[Tensor]]) -> list[Tensor]:
    return [t for group in groups for t in group]


def select(condition: Tensor, a: float, b: float, dtype: torch.dtype) -> Tensor:
    """``a if condition else b`` as a 0-dim tensor of ``dtype`` on the condition's device, without a host
    sync (``torch.where`` of two Python floats would round them to the default float32)."""
    return torch.where(condition, torch.full((), a, dtype=dtype, device=condition.device), b)


def first_step_weight(k: Tensor, beta: float, bias_correction: bool) -> Tensor:
    """The weight of the new value in the averages at step ``k``: 1 - beta, or 1 at the first step
    without bias correction (the averages then start at the first value, as torch's SGD buffer)."""
    if bias_correction:
        return torch.full_like(k, 1.0 - beta)
    return select(k == 1, 1.0, 1.0 - beta, k.dtype)


# The integer type of each float type's width: the bits of a float viewed as an integer.
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def zero_unless_(ok: Tensor, tensors: list[Tensor]) -> None:
    """Sets every tensor to 0 where ``ok`` is False, in place and without a host sync, NaN and inf
    included. A float product by 0 would keep NaN, so the product is taken on the tensors' bits viewed
    as integers: times 1 they are unchanged, times 0 every bit is cleared, which is 0.0. One pass,
    without the temporary (and, on CPU, the page faults) of a torch.where per tensor."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t.view(_BITS[t.dtype]))
    for ints in by_dtype.values():
        torch._foreach_mul_(ints, ok.to(ints[0].dtype))


def scalars_like(value: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    """The 0-dim ``value`` once per tensor, in that tensor's dtype: how foreach ops take a device scalar
    (lerp's weight, addcmul's factor) without reading it back to the host."""
    dtype = tensors[0].dtype
    if all(t.dtype == dtype for t in tensors):
        return [value.to(dtype)] * len(tensors)
    cast = {dtype: value.to(dtype) for dtype in {t.dtype for t in tensors}}
    return [cast[t.dtype] for t in tensors]


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def global_dot(a: list[Tensor], b: list[Tensor], like: Tensor) -> Tensor:
    """sum_i <a_i, b_i> over all tensors, as a 0-dim tensor of the dtype and device of ``like``.
    One vdot per tensor: the cheapest eager reduction here (a product and a sum cost a temporary)."""
    if not a:
        return torch.zeros_like(like)
    dots = [
        torch.vdot(x.flatten(), y.flatten())
        if x.dtype not in _LOW_PRECISION
        else torch.dot(x.flatten().to(like.dtype), y.flatten().to(like.dtype))  # not 8 bits
        for x, y in zip(a, b)
    ]
    return torch.stack(dots).to(like.dtype).sum()


def global_sq_norm(a: list[Tensor], like: Tensor) -> Tensor:
    """sum_i ||a_i||^2 over all tensors, accumulated in the dtype of ``like`` (on its device)."""
    if not a:
        return torch.zeros_like(like)
    return torch.stack(torch._foreach_norm(a, 2, dtype=like.dtype)).square().sum()


def step_size(
    loss_avg: Tensor,
    d_dot_x: Tensor,
    gamma: Tensor,
    d_sq_norm: Tensor,
    rho: Tensor,
    lb: Tensor | float,
    lr: Tensor | float,
    c: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """(t1, tau): the Polyak-type step of the model truncated at ``rho*lb``, and its cap at ``lr/rho``.
    ``c = 1 + lr*weight_decay``. A zero direction (``d_sq_norm == 0``) gives t1 = 0, never 0/0."""
    numerator = torch.clamp(c * (loss_avg - rho * lb) + d_dot_x - c * gamma, min=0)
    t1 = torch.where(d_sq_norm > 0, numerator / d_sq_norm, 0.0)
    return t1, torch.minimum(lr / rho, t1)


def lb_reset(
    lb: Tensor,
    loss_avg: Tensor,
    d_dot_x: Tensor,
    gamma: Tensor,
    rho: Tensor,
    c: Tensor | float,
    lb_floor: Tensor | float,
) -> Tensor:
    """MoMo*'s reset: where the model's value lies below the estimate, halve towards it (not below the floor)."""
    cap = c * loss_avg + d_dot_x - c * gamma
    return torch.where(cap < c * rho * lb, torch.clamp(cap / (2 * c * rho), min=lb_floor), lb)


def lb_after_step(
    loss_avg: Tensor,
    d_dot_x: Tensor,
    gamma: Tensor,
    d_sq_norm: Tensor,
    tau: Tensor,
    rho: Tensor,
    lb_floor: Tensor | float,
) -> Tensor:
    """MoMo*'s update: the model's value after a step of size tau along d, not below the floor."""
    model_value = loss_avg + d_dot_x - gamma
    return torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)


def group_steps(
    ok: Tensor,
    loss_avg: Tensor,
    d_dot_x: Tensor,
    gamma: Tensor,
    d_sq_norm: Tensor,
    rho: Tensor,
    *,
    lb_estimates: list[Tensor | None],
    lrs: list[float] | list[Tensor],
    weight_decays: list[float] | list[Tensor],
    lbs: list[float] | list[Tensor],
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Per param group, from the global model after the step's averages: tau, t1 (both 0 on a skipped
    step) and MoMo*'s new lower-bound estimate (None without it), which is also written into the state."""
    taus, t1s, new_lbs = [], [], []
    for lr, wd, lb_floor, lb in zip(lrs, weight_decays, lbs, lb_estimates):
        c = 1 + lr * wd
        bound = lb_floor
        if lb is not None:
            bound = torch.where(ok, lb_reset(lb, loss_avg, d_dot_x, gamma, rho, c, lb_floor), lb)
        t1, tau = step_size(loss_avg, d_dot_x, gamma, d_sq_norm, rho, bound, lr, c)
        t1, tau = torch.where(ok, t1, 0.0), torch.where(ok, tau, 0.0)
        if lb is not None:
            after = lb_after_step(loss_avg, d_dot_x, gamma, d_sq_norm, tau, rho, lb_floor)
            new_lb = torch.where(ok, after, lb)
            lb.copy_(new_lb)
            new_lbs.append(new_lb)
        else:
            new_lbs.append(None)
        taus.append(tau)
        t1s.append(t1)
    return taus, t1s, new_lbs
