"""MoMo-Adam: the momentum model with Adam's preconditioner (Schaipp et al., ICML 2024, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from momo._base import MomoBase, check_beta, check_finite, check_non_negative
from momo._kernels import (
    as_scalar_tensors,
    compile_kernel,
    flat,
    global_dot,
    group_steps,
    scalars_like,
    select,
    zero_unless_,
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

    A non-finite loss or gradient skips the step, the first one included (parameters, averages and the
    step counter keep their values, tau and t1 are 0; the foreach path zeroes the gradients). Under
    ``torch.distributed`` the loss is averaged over ``process_group`` (``sync_loss=True``; a copy uses
    the default group). Complex parameters step as their real views (``torch.view_as_real``).

    Args:
        params: parameters or param groups.
        lr: the learning rate alpha, which caps the adaptive step (default 1e-2).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the root of the second moment (default 1e-8).
        weight_decay: lambda (default 0).
        lb: lower bound of the loss (default 0); MoMo-Adam*'s initial value and floor.
        divide: proximal weight decay (True) or AdamW's decoupled decay (False).
        use_fstar: MoMo-Adam*, the online lower-bound estimate (default False).
        foreach: multi-tensor kernels (default None: on, like True). False selects the single-tensor
            reference.
        compiled: run the update as one ``torch.compile(fullgraph=True)`` graph of two fused passes
            (default False); lr, weight decay and lb enter it as tensors, so a schedule does not recompile.
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

    def _update(self, loss: Tensor) -> None:
        params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
        for group in self.param_groups:
            group_params, group_grads, (group_avgs, group_sqs) = self._gather(
                group, ("exp_avg", "exp_avg_sq")
            )
            params.append(group_params)
            grads.append(group_grads)
            exp_avgs.append(group_avgs)
            exp_avg_sqs.append(group_sqs)
        if not any(params):
            return
        first = next(g for g in params if g)[0]
        state = self._global_state(first, loss)
        groups = self.param_groups
        lb_estimates = self._lb_estimates(loss)
        taus, t1s, new_lbs = momo_adam(
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
        self._publish(taus, t1s, new_lbs)


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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Functional MoMo-Adam step over param groups (lists of lists). Updates the tensors in place;
    returns per group tau, t1 and the new lower-bound estimate (None without MoMo-Adam*), as fresh
    tensors."""
    if compiled:
        kernel = compile_kernel(_fused_momo_adam)
        # tensors, not floats: one graph serves every lr (a scheduler changes it at every step)
        lrs, weight_decays, lbs = (as_scalar_tensors(v, loss) for v in (lrs, weight_decays, lbs))
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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """The reference: one tensor at a time, written like the equations of the class docstring. A skipped
    step computes everything and keeps nothing (``torch.where(ok, new, old)``)."""
    beta1, beta2 = betas
    dtype = loss.dtype
    zero = torch.zeros((), dtype=dtype, device=loss.device)
    xs, gs = flat(params), flat(grads)

    grad_dot_x = sum((torch.sum(g.to(dtype) * x.to(dtype)) for g, x in zip(gs, xs)), zero)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)  # a NaN or inf in g makes <g, x> one too
    k = step + 1  # the index of this step, if it is taken
    new_loss_avg = beta1 * loss_avg + (1 - beta1) * loss
    new_gamma = beta1 * gamma + (1 - beta1) * grad_dot_x
    new_avgs = [
        [beta1 * d + (1 - beta1) * g for d, g in zip(*pair)] for pair in zip(exp_avgs, grads)
    ]
    new_sqs = [
        [beta2 * v + (1 - beta2) * g * g for v, g in zip(*pair)] for pair in zip(exp_avg_sqs, grads)
    ]
    precond = [
        [torch.sqrt(v / (1 - beta2**k)) + eps for v in group] for group, eps in zip(new_sqs, epss)
    ]
    new_ds = flat(new_avgs)
    d_dot_x = sum((torch.sum(d.to(dtype) * x.to(dtype)) for d, x in zip(new_ds, xs)), zero)
    d_sq_norm = sum((torch.sum((d * d / D).to(dtype)) for d, D in zip(new_ds, flat(precond))), zero)
    rho = 1 - beta1**k

    taus, t1s, new_lbs = [], [], []
    for group_params, group_avgs, group_precond, lr, wd, lb_floor, divide, lb in zip(
        params, new_avgs, precond, lrs, weight_decays, lbs, divides, lb_estimates
    ):
        c = 1 + lr * wd
        bound = lb_floor
        if lb is not None:  # MoMo-Adam*: reset the estimate when the model's value falls below it
            cap = c * new_loss_avg + d_dot_x - c * new_gamma
            bound = torch.where(
                cap < c * rho * lb, torch.clamp(cap / (2 * c * rho), min=lb_floor), lb
            )
        numerator = torch.clamp(c * (new_loss_avg - rho * bound) + d_dot_x - c * new_gamma, min=0)
        t1 = torch.where(d_sq_norm > 0, numerator / d_sq_norm, 0.0)
        tau = torch.minimum(lr / rho, t1)
        for x, d, D in zip(group_params, group_avgs, group_precond):
            if divide:
                new_x = (x - tau * d / D) / c
            else:
                new_x = x * (1 - lr * wd) - tau * d / D
            x.copy_(torch.where(ok, new_x, x))
        if lb is not None:
            model_value = new_loss_avg + d_dot_x - new_gamma
            after = torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)
            new_lbs.append(torch.where(ok, after, lb))
            lb.copy_(new_lbs[-1])
        else:
            new_lbs.append(None)
        taus.append(torch.where(ok, tau, 0.0))
        t1s.append(torch.where(ok, t1, 0.0))

    for old, new in zip(flat(exp_avgs) + flat(exp_avg_sqs), new_ds + flat(new_sqs)):
        old.copy_(torch.where(ok, new, old))
    loss_avg.copy_(torch.where(ok, new_loss_avg, loss_avg))
    gamma.copy_(torch.where(ok, new_gamma, gamma))
    step.copy_(torch.where(ok, k, step))
    return taus, t1s, new_lbs


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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Eager multi-tensor kernels, every scalar a 0-dim tensor (no host synchronisation): Adam's passes
    (as torch's foreach Adam), <g, x> before them, <d, x> and ||d||^2_{D^-1} after."""
    beta1, beta2 = betas
    dtype = loss.dtype
    xs, gs, ds, vs = flat(params), flat(grads), flat(exp_avgs), flat(exp_avg_sqs)

    grad_dot_x = global_dot(gs, xs, loss)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + 1
    # a skipped step averages the old values with themselves: lerp(a, a, w) = a
    loss_avg.lerp_(torch.where(ok, loss, loss_avg), 1 - beta1)
    gamma.lerp_(torch.where(ok, grad_dot_x, gamma), 1 - beta1)
    step.add_(ok)
    # A skipped step leaves d and v as they are: weight 0, decay 1, and its gradients zeroed.
    zero_unless_(ok, gs)
    torch._foreach_lerp_(ds, gs, scalars_like(select(ok, 1 - beta1, 0.0, dtype), ds))
    torch._foreach_mul_(vs, select(ok, beta2, 1.0, dtype))
    torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)

    # u = d / D with D = sqrt(v / (1 - beta2^k)) + eps, as u = s d / (sqrt(v) + s eps) with
    # s = sqrt(1 - beta2^k): one pass fewer than dividing sqrt(v) by s. ``directions`` holds u / s.
    s = torch.sqrt(1 - torch.pow(beta2, k))
    directions: list[list[Tensor]] = []
    for group_avgs, group_sqs, eps in zip(exp_avgs, exp_avg_sqs, epss):
        if not group_avgs:
            directions.append([])
            continue
        denominators = torch._foreach_sqrt(group_sqs)
        torch._foreach_add_(denominators, scalars_like(s * eps, denominators))
        directions.append(torch._foreach_div(group_avgs, denominators))
    d_dot_x = global_dot(ds, xs, loss)
    d_sq_norm = s * global_dot(ds, flat(directions), loss)
    rho = 1 - torch.pow(beta1, k)

    taus, t1s, new_lbs = group_steps(
        ok,
        loss_avg,
        d_dot_x,
        gamma,
        d_sq_norm,
        rho,
        lb_estimates=lb_estimates,
        lrs=lrs,
        weight_decays=weight_decays,
        lbs=lbs,
    )
    for group_params, group_directions, lr, wd, divide, tau in zip(
        params, directions, lrs, weight_decays, divides, taus
    ):
        if not group_params:
            continue
        c = 1 + lr * wd  # known on the host: no decay pass without weight decay
        decay, scale = (1 / c, -tau * s / c) if divide else (1 - lr * wd, -tau * s)
        if decay != 1:  # x is kept on a skipped step (tau is 0 there)
            torch._foreach_mul_(group_params, select(ok, decay, 1.0, dtype))
        torch._foreach_addcmul_(group_params, group_directions, scalars_like(scale, group_params))
    return taus, t1s, new_lbs


def _fused_momo_adam(
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
    lrs: list[Tensor],
    weight_decays: list[Tensor],
    lbs: list[Tensor],
    epss: list[float],
    divides: list[bool],
    betas: tuple[float, float],
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """The kernel that ``compiled=True`` runs under torch.compile: two passes over each tensor, which
    inductor fuses into one loop each. Pass 1 reads g, d, v and x, computes d', v' and D' on the fly
    without writing them, and yields <g, x>, <d', x> and ||d'||^2_{D'^-1}; pass 2 writes d', v' and x.
    Arithmetic runs in the scalars' precision. lrs, weight decays and bounds come as 0-dim tensors, so
    that one graph serves every value."""
    beta1, beta2 = betas
    dtype = loss.dtype
    k = step + 1  # the index of this step, if it is taken
    bias2 = 1 - torch.pow(beta2, k)

    def averaged(d: Tensor, v: Tensor, g: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        d, v, g = d.to(dtype), v.to(dtype), g.to(dtype)
        new_d = beta1 * d + (1 - beta1) * g
        new_v = beta2 * v + (1 - beta2) * g * g
        return new_d, new_v, torch.sqrt(new_v / bias2) + eps

    reductions = torch.zeros(3, dtype=dtype, device=loss.device)
    for group in zip(params, grads, exp_avgs, exp_avg_sqs, epss):
        for x, g, d, v in zip(*group[:4]):
            new_d, _, D = averaged(d, v, g, group[4])
            x_ = x.to(dtype)
            # one stack per tensor: inductor then computes its three sums in one loop
            sums = torch.stack(
                [(g.to(dtype) * x_).sum(), (new_d * x_).sum(), (new_d * new_d / D).sum()]
            )
            reductions = reductions + sums
    grad_dot_x, d_dot_x, d_sq_norm = reductions.unbind()

    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    new_loss_avg = beta1 * loss_avg + (1 - beta1) * loss
    new_gamma = beta1 * gamma + (1 - beta1) * grad_dot_x
    rho = 1 - torch.pow(beta1, k)
    taus, t1s, new_lbs = group_steps(
        ok,
        new_loss_avg,
        d_dot_x,
        new_gamma,
        d_sq_norm,
        rho,
        lb_estimates=lb_estimates,
        lrs=lrs,
        weight_decays=weight_decays,
        lbs=lbs,
    )
    # Pass 2 walks the tensors backwards: the last ones read by pass 1 are the likeliest still cached.
    groups = zip(params, grads, exp_avgs, exp_avg_sqs, epss, lrs, weight_decays, divides, taus)
    for group in reversed(list(groups)):
        eps, lr, wd, divide, tau = group[4:]
        decay = 1 / (1 + lr * wd) if divide else 1 - lr * wd
        for x, g, d, v in reversed(list(zip(*group[:4]))):
            new_d, new_v, D = averaged(d, v, g, eps)
            new_x = (x - tau * new_d / D) * decay if divide else x * decay - tau * new_d / D
            x.copy_(torch.where(ok, new_x, x))
            d.copy_(torch.where(ok, new_d, d))
            v.copy_(torch.where(ok, new_v, v))
    loss_avg.copy_(torch.where(ok, new_loss_avg, loss_avg))
    gamma.copy_(torch.where(ok, new_gamma, gamma))
    step.copy_(torch.where(ok, k, step))
    return taus, t1s, new_lbs
