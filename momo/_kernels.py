"""Building blocks of the multi-tensor paths of Momo and MomoAdam.

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
    """The kernel as one compiled function: inductor fuses elementwise work across the foreach ops that
    eager PyTorch runs as separate passes (how much depends on the backend: see the README's table)."""
    return torch.compile(kernel, fullgraph=True)  # type: ignore[return-value]


def select(condition: Tensor, a: float, b: float, dtype: torch.dtype) -> Tensor:
    """``a if condition else b`` as a 0-dim tensor of ``dtype`` on the condition's device, without a host
    sync (``torch.where`` of two Python floats would round them to the default float32)."""
    return torch.where(condition, torch.full((), a, dtype=dtype, device=condition.device), b)


# The integer type of each float type's width: the bits of a float viewed as an integer.
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def finite_grads(ok: Tensor, grads: list[Tensor]) -> list[Tensor]:
    """The gradients, zero everywhere when ``ok`` is False (NaN and inf included), so that a skipped
    step adds nothing. Eager: a bitwise mask of the gradients themselves (one pass, no temporary).
    Compiled: a torch.where, which inductor fuses into the update (a mutated graph input would not be)."""
    if torch.compiler.is_compiling():
        return [torch.where(ok, g, 0.0) for g in grads]
    zero_unless_(ok, grads)
    return grads


def ema_(averages: list[Tensor], grads: list[Tensor], ok: Tensor, beta: float) -> None:
    """averages = beta * averages + (1 - beta) * grads where ``ok``; left as they are (NaN and inf
    gradients included: 0 * NaN would be NaN) where not."""
    if torch.compiler.is_compiling():
        # inductor fuses this select into the lerp's loop
        safe_grads = [torch.where(ok, g, a) for g, a in zip(grads, averages)]
        torch._foreach_lerp_(averages, safe_grads, 1.0 - beta)
    else:
        # eager: a temporary per tensor would cost a pass and an allocation; mask in place instead
        zero_unless_(ok, grads)
        weight = select(ok, 1.0 - beta, 0.0, averages[0].dtype)
        torch._foreach_lerp_(averages, grads, [weight] * len(averages))


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


def global_dot(a: list[Tensor], b: list[Tensor], dtype: torch.dtype) -> Tensor:
    """sum_i <a_i, b_i> over all tensors, accumulated in ``dtype``."""
    if not a:
        return torch.zeros((), dtype=dtype)
    dots = [torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b)]
    return torch.stack(dots).to(dtype).sum()


def global_sq_norm(a: list[Tensor], dtype: torch.dtype) -> Tensor:
    """sum_i ||a_i||^2 over all tensors."""
    if not a:
        return torch.zeros((), dtype=dtype)
    norms = torch._foreach_norm(a)
    return torch.stack(norms).to(dtype).square().sum()


def add_scaled_(tensors: list[Tensor], others: list[Tensor], scale: Tensor) -> None:
    """tensors += scale * others for a 0-dim tensor ``scale``, in one pass and without a temporary."""
    torch._foreach_addcmul_(tensors, others, [scale.to(others[0].dtype)] * len(others))


def step_size(
    loss_avg: Tensor,
    d_dot_x: Tensor,
    gamma: Tensor,
    d_sq_norm: Tensor,
    rho: Tensor,
    lb: Tensor | float,
    lr: float,
    c: float,
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
    c: float,
    lb_floor: float,
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
    lb_floor: float,
) -> Tensor:
    """MoMo*'s update: the model's value after a step of size tau along d, not below the floor."""
    model_value = loss_avg + d_dot_x - gamma
    return torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)
