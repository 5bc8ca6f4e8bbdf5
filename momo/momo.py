"""MoMo: the momentum model on SGD with momentum (Schaipp et al., ICML 2024, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from momo._base import (
    MomoBase,
    check_beta,
    check_finite,
    check_non_negative,
)
from momo._kernels import (
    add_scaled_,
    compile_kernel,
    ema_,
    global_dot,
    global_sq_norm,
    lb_after_step,
    lb_reset,
    select,
    step_size,
)

__all__ = ["Momo", "momo"]


class Momo(MomoBase):
    r"""MoMo: a model-based adaptive learning rate for SGD with momentum.

    .. code-block:: text

        input: x_1, lr alpha (cap), beta, lower bound lb, weight decay lambda, bias_correction
        for k = 1, 2, ...:
            f_k, g_k = loss and gradient of the batch at x_k
            fbar_k  = beta fbar_{k-1}  + (1 - beta) f_k            state["momo"]["loss_avg"]
            d_k     = beta d_{k-1}     + (1 - beta) g_k            state[p]["exp_avg"]
            gamma_k = beta gamma_{k-1} + (1 - beta) <g_k, x_k>     state["momo"]["gamma"]
            rho_k   = 1 - beta^k if bias_correction else 1
            per param group (alpha, lambda):
                t1  = max((1 + alpha lambda)(fbar_k - rho_k lb) + <d_k, x_k>
                          - (1 + alpha lambda) gamma_k, 0) / ||d_k||^2      group["adaptive_step"]
                tau = min(alpha / rho_k, t1)                                group["step_size"]
                x_{k+1} = (x_k - tau d_k) / (1 + alpha lambda)

    Without bias correction the averages start at the first batch (fbar_0 = f_1, d_0 = g_1,
    gamma_0 = <g_1, x_1>); with it they start at zero. Inner products and norms run over all parameters
    of all groups; tau is per group. The step counter ``k`` is ``state["momo"]["step"]``.
    ``||d_k|| = 0`` gives ``t1 = 0`` (no step).

    MoMo* (``use_fstar=True``) estimates the lower bound online; ``lb`` is its initial value and floor.
    Before t1, with ``c = 1 + alpha lambda`` and ``cap = c fbar_k + <d_k, x_k> - c gamma_k``: if
    ``cap < c rho_k lb`` then ``lb = max(cap / (2 c rho_k), lb_floor)``; after the step
    ``lb = max((h_k - tau ||d_k||^2 / 2) / rho_k, lb_floor)`` with ``h_k = fbar_k + <d_k, x_k> - gamma_k``.
    The estimate is ``state["momo"]["lb_estimate.<group index>"]``, shown as ``group["lb_estimate"]``.

    With ``beta=0`` MoMo is the truncated Polyak step (SPS_max, with proximal weight decay).

    A non-finite loss or gradient skips the step: parameters and every average keep their values,
    ``group["step_size"]`` is 0 for that step, and the eager path zeroes the gradients. Under
    ``torch.distributed`` with several processes the loss is averaged over ``process_group`` before it
    enters ``fbar`` (``sync_loss=True``), so that every rank takes the same step.

    Args:
        params: parameters or param groups.
        lr: the learning rate alpha, which caps the adaptive step (default 1.0).
        beta: momentum of the averages, in [0, 1) (default 0.9).
        lb: lower bound of the loss (default 0); MoMo*'s initial value and floor.
        weight_decay: lambda, applied as a proximal step (default 0).
        bias_correction: zero-initialised averages with the rho_k correction (default False).
        use_fstar: MoMo*, the online lower-bound estimate (default False).
        foreach: multi-tensor kernels (default: True). False selects the single-tensor reference.
        compiled: run the whole update as one ``torch.compile(fullgraph=True)`` function (default False).
        sync_loss: average the loss over data-parallel ranks (default True).
        process_group: the group for ``sync_loss`` (default: the world).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        beta: float = 0.9,
        lb: float = 0.0,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        use_fstar: bool = False,
        *,
        foreach: bool | None = None,
        compiled: bool = False,
        sync_loss: bool = True,
        process_group: Any = None,
    ) -> None:
        check_non_negative("lr", lr)
        check_beta("beta", beta)
        check_finite("lb", lb)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            beta=beta,
            lb=lb,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            use_fstar=use_fstar,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults, sync_loss=sync_loss, process_group=process_group)

    def _gather(self, group: dict[str, Any], params, grads, exp_avgs) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Momo does not support sparse gradients")
            state = self.state[p]
            if not state:
                # Without bias correction d_0 = g_1, so that d_1 = g_1 (as torch's SGD buffer).
                state["exp_avg"] = (
                    torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["bias_correction"]
                    else p.grad.detach().clone(memory_format=torch.preserve_format)
                )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])

    def _update(self, loss: Tensor) -> None:
        params, grads, exp_avgs = [], [], []
        for group in self.param_groups:
            group_params: list[Tensor] = []
            group_grads: list[Tensor] = []
            group_avgs: list[Tensor] = []
            self._gather(group, group_params, group_grads, group_avgs)
            params.append(group_params)
            grads.append(group_grads)
            exp_avgs.append(group_avgs)
        if not any(params):
            return
        first = next(g for g in params if g)[0]
        state = self._global_state(first, loss)
        groups = self.param_groups
        lb_estimates = self._lb_estimates(loss)
        taus, t1s = momo(
            params,
            grads,
            exp_avgs,
            loss=loss,
            step=state["step"],
            loss_avg=state["loss_avg"],
            gamma=state["gamma"],
            lb_estimates=lb_estimates,
            lrs=[g["lr"] for g in groups],
            weight_decays=[g["weight_decay"] for g in groups],
            lbs=[g["lb"] for g in groups],
            beta=groups[0]["beta"],
            bias_correction=groups[0]["bias_correction"],
            foreach=groups[0]["foreach"] is not False,
            compiled=groups[0]["compiled"],
        )
        self._publish(taus, t1s, lb_estimates)


def momo(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    beta: float,
    bias_correction: bool,
    foreach: bool = True,
    compiled: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Functional MoMo step over param groups (lists of lists). Updates ``params``, ``exp_avgs``, ``step``,
    ``loss_avg``, ``gamma`` and the ``lb_estimates`` in place; returns (tau, t1) per group."""
    if compiled:
        kernel = compile_kernel(_multi_tensor_momo)
    else:
        kernel = _multi_tensor_momo if foreach else _single_tensor_momo
    return kernel(
        params,
        grads,
        exp_avgs,
        loss=loss,
        step=step,
        loss_avg=loss_avg,
        gamma=gamma,
        lb_estimates=lb_estimates,
        lrs=lrs,
        weight_decays=weight_decays,
        lbs=lbs,
        beta=beta,
        bias_correction=bias_correction,
    )


def _single_tensor_momo(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    beta: float,
    bias_correction: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """The reference: one parameter at a time, written like the equations of the class docstring."""
    all_params = [p for group in params for p in group]
    all_grads = [g for group in grads for g in group]
    all_avgs = [d for group in exp_avgs for d in group]
    dtype = loss.dtype

    grad_dot_x = sum((torch.sum(g.to(dtype) * x.to(dtype)) for g, x in zip(all_grads, all_params)))
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + ok.to(step.dtype)
    # Without bias correction the averages start at the first value: weight 1 on the first step.
    first = k == 1
    weight = torch.full_like(loss, 1.0 - beta)
    if not bias_correction:
        weight = torch.where(first, torch.ones_like(weight), weight)
    loss_avg.copy_(torch.where(ok, (1 - weight) * loss_avg + weight * loss, loss_avg))
    gamma.copy_(torch.where(ok, (1 - weight) * gamma + weight * grad_dot_x, gamma))
    for d, g in zip(all_avgs, all_grads):
        d.copy_(torch.where(ok, beta * d + (1 - beta) * g, d))
    step.copy_(k)

    d_dot_x = sum((torch.sum(d.to(dtype) * x.to(dtype)) for d, x in zip(all_avgs, all_params)))
    d_sq_norm = sum(torch.sum(d.to(dtype) * d.to(dtype)) for d in all_avgs)
    rho = 1 - beta**k if bias_correction else torch.ones_like(k)

    taus, t1s = [], []
    for group_params, group_avgs, lr, wd, lb_floor, lb in zip(
        params, exp_avgs, lrs, weight_decays, lbs, lb_estimates
    ):
        c = 1 + lr * wd
        if lb is not None:  # MoMo*: reset the estimate when the model's value falls below it
            cap = c * loss_avg + d_dot_x - c * gamma
            new_lb = torch.where(
                cap < c * rho * lb, torch.clamp(cap / (2 * c * rho), min=lb_floor), lb
            )
            lb.copy_(torch.where(ok, new_lb, lb))
        bound = lb if lb is not None else lb_floor
        numerator = torch.clamp(c * (loss_avg - rho * bound) + d_dot_x - c * gamma, min=0)
        t1 = torch.where(d_sq_norm > 0, numerator / d_sq_norm, 0.0)
        tau = torch.where(ok, torch.minimum(lr / rho, t1), 0.0)
        for x, d in zip(group_params, group_avgs):
            x.copy_(torch.where(ok, (x - tau * d) / c, x))
        if lb is not None:
            model_value = loss_avg + d_dot_x - gamma
            new_lb = torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)
            lb.copy_(torch.where(ok, new_lb, lb))
        taus.append(tau)
        t1s.append(t1)
    return taus, t1s


def _multi_tensor_momo(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    beta: float,
    bias_correction: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """The fast path: torch._foreach_* kernels, every scalar a 0-dim tensor (no host synchronisation)."""
    all_params = [p for group in params for p in group]
    all_grads = [g for group in grads for g in group]
    all_avgs = [d for group in exp_avgs for d in group]
    dtype = loss.dtype

    grad_dot_x = global_dot(all_grads, all_params, dtype)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + ok.to(step.dtype)
    weight = 1.0 - beta if bias_correction else select(k == 1, 1.0, 1.0 - beta, dtype)
    loss_avg.copy_(torch.where(ok, torch.lerp(loss_avg, loss, weight), loss_avg))
    gamma.copy_(torch.where(ok, torch.lerp(gamma, grad_dot_x, weight), gamma))
    step.copy_(k)
    ema_(all_avgs, all_grads, ok, beta)  # a skipped step leaves d as it is
    d_dot_x = global_dot(all_avgs, all_params, dtype)
    d_sq_norm = global_sq_norm(all_avgs, dtype)
    rho = 1 - torch.pow(beta, k) if bias_correction else torch.ones_like(k)

    taus, t1s = [], []
    for group_params, group_avgs, lr, wd, lb_floor, lb in zip(
        params, exp_avgs, lrs, weight_decays, lbs, lb_estimates
    ):
        c = 1 + lr * wd
        if lb is not None:
            lb.copy_(torch.where(ok, lb_reset(lb, loss_avg, d_dot_x, gamma, rho, c, lb_floor), lb))
        t1, tau = step_size(
            loss_avg, d_dot_x, gamma, d_sq_norm, rho, lb if lb is not None else lb_floor, lr, c
        )
        tau = torch.where(ok, tau, 0.0)
        if group_params:
            if c != 1:
                # Proximal weight decay (x - tau d) / c, with c = 1 + lr*wd known on the host.
                torch._foreach_mul_(group_params, select(ok, 1.0 / c, 1.0, group_params[0].dtype))
                scale = -tau / c
            else:
                scale = -tau
            add_scaled_(group_params, group_avgs, scale)
        if lb is not None:
            new_lb = lb_after_step(loss_avg, d_dot_x, gamma, d_sq_norm, tau, rho, lb_floor)
            lb.copy_(torch.where(ok, new_lb, lb))
        taus.append(tau)
        t1s.append(t1)
    return taus, t1s
