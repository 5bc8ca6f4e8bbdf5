"""MoMo-Adam: the momentum model with Adam's preconditioner (Schaipp et al., ICML 2024, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from momo._base import MomoBase, check_beta, check_finite, check_non_negative
from momo._kernels import (
    add_scaled_,
    compile_kernel,
    finite_grads,
    global_dot,
    lb_after_step,
    lb_reset,
    select,
    step_size,
)

__all__ = ["MomoAdam", "momo_adam"]


class MomoAdam(MomoBase):
    r"""MoMo-Adam: a model-based adaptive learning rate for Adam.

    .. code-block:: text

        input: x_1, lr alpha (cap), (beta1, beta2), eps, lower bound lb, weight decay lambda, divide
        all averages start at zero
        for k = 1, 2, ...:
            f_k, g_k = loss and gradient of the batch at x_k
            fbar_k  = beta1 fbar_{k-1}  + (1 - beta1) f_k             state["momo"]["loss_avg"]
            d_k     = beta1 d_{k-1}     + (1 - beta1) g_k             state[p]["exp_avg"]
            v_k     = beta2 v_{k-1}     + (1 - beta2) g_k * g_k       state[p]["exp_avg_sq"]
            gamma_k = beta1 gamma_{k-1} + (1 - beta1) <g_k, x_k>      state["momo"]["gamma"]
            D_k     = sqrt(v_k / (1 - beta2^k)) + eps ;  rho_k = 1 - beta1^k
            per param group (alpha, lambda), c = 1 + alpha lambda:
                t1  = max(c (fbar_k - rho_k lb) + <d_k, x_k> - c gamma_k, 0) / ||d_k||^2_{D_k^-1}
                                                                      group["adaptive_step"]
                tau = min(alpha / rho_k, t1)                          group["step_size"]
                divide=True:  x_{k+1} = (x_k - tau d_k / D_k) / c      (proximal weight decay)
                divide=False: x_{k+1} = x_k (1 - alpha lambda) - tau d_k / D_k   (AdamW-like)

    with ``||d||^2_{D^-1} = sum d * d / D`` over all parameters of all groups (eps outside the square root,
    as torch's Adam). The step counter ``k`` is ``state["momo"]["step"]``. When the cap binds
    (``t1 >= alpha / rho_k``) the step is exactly Adam's (AdamW's with ``divide=False``).

    MoMo-Adam* (``use_fstar=True``) estimates the lower bound online as in :class:`momo.Momo`, with the
    D-weighted norm; the estimate is ``state["momo"]["lb_estimate.<group index>"]``, shown as
    ``group["lb_estimate"]``.

    A non-finite loss or gradient skips the step (parameters and averages keep their values; the eager
    path zeroes the gradients). Under ``torch.distributed`` the loss is averaged over ``process_group``
    (``sync_loss=True``).

    Args:
        params: parameters or param groups.
        lr: the learning rate alpha, which caps the adaptive step (default 1e-2).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the root of the second moment (default 1e-8).
        weight_decay: lambda (default 0).
        lb: lower bound of the loss (default 0); MoMo-Adam*'s initial value and floor.
        divide: proximal weight decay (True) or AdamW's decoupled decay (False).
        use_fstar: MoMo-Adam*, the online lower-bound estimate (default False).
        foreach: multi-tensor kernels (default: True). False selects the single-tensor reference.
        compiled: run the whole update as one ``torch.compile(fullgraph=True)`` function (default False).
        sync_loss: average the loss over data-parallel ranks (default True).
        process_group: the group for ``sync_loss`` (default: the world).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lb: float = 0.0,
        divide: bool = True,
        use_fstar: bool = False,
        *,
        foreach: bool | None = None,
        compiled: bool = False,
        sync_loss: bool = True,
        process_group: Any = None,
    ) -> None:
        check_non_negative("lr", lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas} (must be a pair (beta1, beta2))")
        check_beta("beta1 in betas", betas[0])
        check_beta("beta2 in betas", betas[1])
        check_non_negative("eps", eps)
        check_non_negative("weight_decay", weight_decay)
        check_finite("lb", lb)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            lb=lb,
            divide=divide,
            use_fstar=use_fstar,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults, sync_loss=sync_loss, process_group=process_group)

    def _gather(self, group: dict[str, Any], params, grads, exp_avgs, exp_avg_sqs) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("MomoAdam does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])

    def _update(self, loss: Tensor) -> None:
        params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
        for group in self.param_groups:
            lists: tuple[list[Tensor], ...] = ([], [], [], [])
            self._gather(group, *lists)
            for collected, new in zip((params, grads, exp_avgs, exp_avg_sqs), lists):
                collected.append(new)
        if not any(params):
            return
        first = next(g for g in params if g)[0]
        state = self._global_state(first, loss)
        groups = self.param_groups
        lb_estimates = self._lb_estimates(loss)
        taus, t1s = momo_adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            loss=loss,
            step=state["step"],
            loss_avg=state["loss_avg"],
            gamma=state["gamma"],
            lb_estimates=lb_estimates,
            lrs=[g["lr"] for g in groups],
            weight_decays=[g["weight_decay"] for g in groups],
            lbs=[g["lb"] for g in groups],
            epss=[g["eps"] for g in groups],
            divides=[g["divide"] for g in groups],
            betas=groups[0]["betas"],
            foreach=groups[0]["foreach"] is not False,
            compiled=groups[0]["compiled"],
        )
        self._publish(taus, t1s, lb_estimates)


def momo_adam(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    exp_avg_sqs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    epss: list[float],
    divides: list[bool],
    betas: tuple[float, float],
    foreach: bool = True,
    compiled: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Functional MoMo-Adam step over param groups (lists of lists). Updates the tensors in place;
    returns (tau, t1) per group."""
    if compiled:
        kernel = compile_kernel(_multi_tensor_momo_adam)
    else:
        kernel = _multi_tensor_momo_adam if foreach else _single_tensor_momo_adam
    return kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        loss=loss,
        step=step,
        loss_avg=loss_avg,
        gamma=gamma,
        lb_estimates=lb_estimates,
        lrs=lrs,
        weight_decays=weight_decays,
        lbs=lbs,
        epss=epss,
        divides=divides,
        betas=betas,
    )


def _single_tensor_momo_adam(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    exp_avg_sqs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    epss: list[float],
    divides: list[bool],
    betas: tuple[float, float],
) -> tuple[list[Tensor], list[Tensor]]:
    """The reference: one parameter at a time, written like the equations of the class docstring."""
    beta1, beta2 = betas
    dtype = loss.dtype
    flat = [
        (x, g, d, v, eps)
        for group in zip(params, grads, exp_avgs, exp_avg_sqs, epss)
        for x, g, d, v, eps in zip(*group[:4], [group[4]] * len(group[0]))
    ]

    grad_dot_x = sum(torch.sum(g.to(dtype) * x.to(dtype)) for x, g, _, _, _ in flat)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + ok.to(step.dtype)
    loss_avg.copy_(torch.where(ok, beta1 * loss_avg + (1 - beta1) * loss, loss_avg))
    gamma.copy_(torch.where(ok, beta1 * gamma + (1 - beta1) * grad_dot_x, gamma))
    for _, g, d, v, _ in flat:
        d.copy_(torch.where(ok, beta1 * d + (1 - beta1) * g, d))
        v.copy_(torch.where(ok, beta2 * v + (1 - beta2) * g * g, v))
    step.copy_(k)

    precond = {id(d): torch.sqrt(v / (1 - beta2**k)) + eps for _, _, d, v, eps in flat}
    d_dot_x = sum(torch.sum(d.to(dtype) * x.to(dtype)) for x, _, d, _, _ in flat)
    d_sq_norm = sum(torch.sum((d * d / precond[id(d)]).to(dtype)) for _, _, d, _, _ in flat)
    rho = 1 - beta1**k

    taus, t1s = [], []
    for group_params, group_avgs, lr, wd, lb_floor, divide, lb in zip(
        params, exp_avgs, lrs, weight_decays, lbs, divides, lb_estimates
    ):
        c = 1 + lr * wd
        if lb is not None:
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
            if divide:
                new_x = (x - tau * d / precond[id(d)]) / c
            else:
                new_x = x * (1 - lr * wd) - tau * d / precond[id(d)]
            x.copy_(torch.where(ok, new_x, x))
        if lb is not None:
            model_value = loss_avg + d_dot_x - gamma
            new_lb = torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)
            lb.copy_(torch.where(ok, new_lb, lb))
        taus.append(tau)
        t1s.append(t1)
    return taus, t1s


def _multi_tensor_momo_adam(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    exp_avg_sqs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[float],
    weight_decays: list[float],
    lbs: list[float],
    epss: list[float],
    divides: list[bool],
    betas: tuple[float, float],
) -> tuple[list[Tensor], list[Tensor]]:
    """The fast path: torch._foreach_* kernels, every scalar a 0-dim tensor (no host synchronisation)."""
    beta1, beta2 = betas
    dtype = loss.dtype
    all_params = [p for group in params for p in group]
    all_grads = [g for group in grads for g in group]
    all_avgs = [d for group in exp_avgs for d in group]
    all_sqs = [v for group in exp_avg_sqs for v in group]

    grad_dot_x = global_dot(all_grads, all_params, dtype)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + ok.to(step.dtype)
    loss_avg.copy_(torch.where(ok, torch.lerp(loss_avg, loss, 1 - beta1), loss_avg))
    gamma.copy_(torch.where(ok, torch.lerp(gamma, grad_dot_x, 1 - beta1), gamma))
    step.copy_(k)
    # On a skipped step the averages keep their values: weight 0, decay 1 and a zero gradient.
    all_grads = finite_grads(ok, all_grads)  # NaN and inf gradients become 0 too
    torch._foreach_mul_(all_avgs, select(ok, beta1, 1.0, all_avgs[0].dtype))
    torch._foreach_add_(all_avgs, all_grads, alpha=1.0 - beta1)
    torch._foreach_mul_(all_sqs, select(ok, beta2, 1.0, all_sqs[0].dtype))
    torch._foreach_addcmul_(all_sqs, all_grads, all_grads, value=1 - beta2)

    # D = sqrt(v / (1 - beta2^k)) + eps, then u = d / D, the preconditioned direction.
    precond = torch._foreach_sqrt(all_sqs)
    torch._foreach_div_(precond, torch.sqrt(1 - torch.pow(beta2, k)).to(precond[0].dtype))
    start = 0
    for group_params, eps in zip(params, epss):
        torch._foreach_add_(precond[start : start + len(group_params)], eps)
        start += len(group_params)
    directions = torch._foreach_div(all_avgs, precond)
    d_dot_x = global_dot(all_avgs, all_params, dtype)
    d_sq_norm = global_dot(all_avgs, directions, dtype)
    rho = 1 - torch.pow(beta1, k)

    taus, t1s = [], []
    start = 0
    for group_params, lr, wd, lb_floor, divide, lb in zip(
        params, lrs, weight_decays, lbs, divides, lb_estimates
    ):
        group_directions = directions[start : start + len(group_params)]
        start += len(group_params)
        c = 1 + lr * wd
        if lb is not None:
            lb.copy_(torch.where(ok, lb_reset(lb, loss_avg, d_dot_x, gamma, rho, c, lb_floor), lb))
        t1, tau = step_size(
            loss_avg, d_dot_x, gamma, d_sq_norm, rho, lb if lb is not None else lb_floor, lr, c
        )
        tau = torch.where(ok, tau, 0.0)
        if group_params:
            decay = 1.0 / c if divide else 1.0 - lr * wd
            scale = -tau / c if divide else -tau
            if decay != 1.0:
                torch._foreach_mul_(group_params, select(ok, decay, 1.0, group_params[0].dtype))
            add_scaled_(group_params, group_directions, scale)
        if lb is not None:
            new_lb = lb_after_step(loss_avg, d_dot_x, gamma, d_sq_norm, tau, rho, lb_floor)
            lb.copy_(torch.where(ok, new_lb, lb))
        taus.append(tau)
        t1s.append(t1)
    return taus, t1s
