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
    as_scalar_tensors,
    compile_kernel,
    first_step_weight,
    flat,
    global_dot,
    global_sq_norm,
    group_steps,
    scalars_like,
    select,
    zero_unless_,
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

    Without bias correction the averages start at the first batch taken (fbar_1 = f_1, d_1 = g_1,
    gamma_1 = <g_1, x_1>: weight 1 on the first step); with it they start at zero. Inner products and norms run over all parameters
    of all groups; tau is per group. The step counter ``k`` is ``state["momo"]["step"]``.
    ``||d_k|| = 0`` gives ``t1 = 0`` (no step).

    MoMo* (``use_fstar=True``) estimates the lower bound online; ``lb`` is its initial value and floor.
    Before t1, with ``c = 1 + alpha lambda`` and ``cap = c fbar_k + <d_k, x_k> - c gamma_k``: if
    ``cap < c rho_k lb`` then ``lb = max(cap / (2 c rho_k), lb_floor)``; after the step
    ``lb = max((h_k - tau ||d_k||^2 / 2) / rho_k, lb_floor)`` with ``h_k = fbar_k + <d_k, x_k> - gamma_k``.
    The estimate is ``state["momo"]["lb_estimate.<group index>"]``, shown as ``group["lb_estimate"]``.

    With ``beta=0`` MoMo is the truncated Polyak step (SPS_max, with proximal weight decay).

    A non-finite loss or gradient skips the step, the first one included: parameters, every average and
    the step counter keep their values, ``group["step_size"]`` and ``group["adaptive_step"]`` are 0 for
    that step, and the foreach path zeroes the gradients. Under ``torch.distributed`` with several
    processes the loss is averaged over ``process_group`` before it enters ``fbar`` (``sync_loss=True``),
    so that every rank takes the same step; a copy (``copy.deepcopy``, pickle) uses the default group.
    Complex parameters step as their real views (``torch.view_as_real``), as in torch.optim.

    Args:
        params: parameters or param groups.
        lr: the learning rate alpha, which caps the adaptive step (default 1.0).
        beta: momentum of the averages, in [0, 1) (default 0.9).
        lb: lower bound of the loss (default 0); MoMo*'s initial value and floor.
        weight_decay: lambda, applied as a proximal step (default 0).
        bias_correction: zero-initialised averages with the rho_k correction (default False).
        use_fstar: MoMo*, the online lower-bound estimate (default False).
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

    def _update(self, loss: Tensor) -> None:
        params, grads, exp_avgs = [], [], []
        for group in self.param_groups:
            group_params, group_grads, (group_avgs,) = self._gather(group, ("exp_avg",))
            params.append(group_params)
            grads.append(group_grads)
            exp_avgs.append(group_avgs)
        if not any(params):
            return
        first = next(g for g in params if g)[0]
        state = self._global_state(first, loss)
        groups = self.param_groups
        lb_estimates = self._lb_estimates(loss)
        taus, t1s, new_lbs = momo(
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
        self._publish(taus, t1s, new_lbs)


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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Functional MoMo step over param groups (lists of lists). Updates ``params``, ``exp_avgs``, ``step``,
    ``loss_avg``, ``gamma`` and the ``lb_estimates`` in place; returns per group tau, t1 and the new lower
    bound estimate (None without MoMo*), as fresh tensors."""
    if compiled:
        kernel = compile_kernel(_fused_momo)
        # tensors, not floats: one graph serves every lr (a scheduler changes it at every step)
        lrs, weight_decays, lbs = (as_scalar_tensors(v, loss) for v in (lrs, weight_decays, lbs))
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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """The reference: one tensor at a time, written like the equations of the class docstring. A skipped
    step computes everything and keeps nothing (``torch.where(ok, new, old)``)."""
    dtype = loss.dtype
    zero = torch.zeros((), dtype=dtype, device=loss.device)
    xs, gs = flat(params), flat(grads)

    grad_dot_x = sum((torch.sum(g.to(dtype) * x.to(dtype)) for g, x in zip(gs, xs)), zero)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)  # a NaN or inf in g makes <g, x> one too
    k = step + 1  # the index of this step, if it is taken
    # Without bias correction the averages start at the first value: weight 1 on the first step.
    w = (
        torch.full_like(k, 1 - beta)
        if bias_correction
        else torch.where(k == 1, 1.0, 1 - beta + zero)
    )
    new_loss_avg = (1 - w) * loss_avg + w * loss
    new_gamma = (1 - w) * gamma + w * grad_dot_x
    new_avgs = [[(1 - w) * d + w * g for d, g in zip(*group)] for group in zip(exp_avgs, grads)]
    new_ds = flat(new_avgs)
    d_dot_x = sum((torch.sum(d.to(dtype) * x.to(dtype)) for d, x in zip(new_ds, xs)), zero)
    d_sq_norm = sum((torch.sum(d.to(dtype) * d.to(dtype)) for d in new_ds), zero)
    rho = 1 - beta**k if bias_correction else torch.ones_like(k)

    taus, t1s, new_lbs = [], [], []
    for group_params, group_avgs, lr, wd, lb_floor, lb in zip(
        params, new_avgs, lrs, weight_decays, lbs, lb_estimates
    ):
        c = 1 + lr * wd
        bound = lb_floor
        if lb is not None:  # MoMo*: reset the estimate when the model's value falls below it
            cap = c * new_loss_avg + d_dot_x - c * new_gamma
            bound = torch.where(
                cap < c * rho * lb, torch.clamp(cap / (2 * c * rho), min=lb_floor), lb
            )
        numerator = torch.clamp(c * (new_loss_avg - rho * bound) + d_dot_x - c * new_gamma, min=0)
        t1 = torch.where(d_sq_norm > 0, numerator / d_sq_norm, 0.0)
        tau = torch.minimum(lr / rho, t1)
        for x, d in zip(group_params, group_avgs):
            x.copy_(torch.where(ok, (x - tau * d) / c, x))
        if lb is not None:
            model_value = new_loss_avg + d_dot_x - new_gamma
            after = torch.clamp((model_value - 0.5 * tau * d_sq_norm) / rho, min=lb_floor)
            new_lbs.append(torch.where(ok, after, lb))
            lb.copy_(new_lbs[-1])
        else:
            new_lbs.append(None)
        taus.append(torch.where(ok, tau, 0.0))
        t1s.append(torch.where(ok, t1, 0.0))

    for d, new_d in zip(flat(exp_avgs), new_ds):
        d.copy_(torch.where(ok, new_d, d))
    loss_avg.copy_(torch.where(ok, new_loss_avg, loss_avg))
    gamma.copy_(torch.where(ok, new_gamma, gamma))
    step.copy_(torch.where(ok, k, step))
    return taus, t1s, new_lbs


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
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """Eager multi-tensor kernels, every scalar a 0-dim tensor (no host synchronisation). Eager PyTorch
    cannot fuse a reduction with an update, so the reductions run where they cost fewest passes: <g, x>
    before the averages, <d, x> and ||d||^2 after them."""
    dtype = loss.dtype
    xs, gs, ds = flat(params), flat(grads), flat(exp_avgs)

    grad_dot_x = global_dot(gs, xs, loss)
    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    k = step + 1
    w = first_step_weight(k, beta, bias_correction)
    # a skipped step averages the old values with themselves: lerp(a, a, w) = a
    loss_avg.lerp_(torch.where(ok, loss, loss_avg), w)
    gamma.lerp_(torch.where(ok, grad_dot_x, gamma), w)
    step.add_(ok)
    # A skipped step leaves d as it is: weight 0, and its gradients zeroed (0 * NaN would be NaN).
    zero_unless_(ok, gs)
    torch._foreach_lerp_(ds, gs, scalars_like(torch.where(ok, w, 0.0), ds))
    d_dot_x = global_dot(ds, xs, loss)
    d_sq_norm = global_sq_norm(ds, loss)
    rho = 1 - torch.pow(beta, k) if bias_correction else torch.ones_like(k)

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
    for group_params, group_avgs, lr, wd, tau in zip(params, exp_avgs, lrs, weight_decays, taus):
        if not group_params:
            continue
        c = 1 + lr * wd  # known on the host: no decay pass without weight decay
        if c != 1:  # proximal weight decay, x = (x - tau d) / c; x is kept on a skipped step
            torch._foreach_mul_(group_params, select(ok, 1 / c, 1.0, dtype))
        torch._foreach_addcmul_(group_params, group_avgs, scalars_like(-tau / c, group_params))
    return taus, t1s, new_lbs


def _fused_momo(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[list[Tensor]],
    *,
    loss: Tensor,
    step: Tensor,
    loss_avg: Tensor,
    gamma: Tensor,
    lb_estimates: list[Tensor | None],
    lrs: list[Tensor],
    weight_decays: list[Tensor],
    lbs: list[Tensor],
    beta: float,
    bias_correction: bool,
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """The kernel that ``compiled=True`` runs under torch.compile: two passes over each tensor, which
    inductor fuses into one loop each. Pass 1 reads g, d and x, computes d' = (1 - w) d + w g on the fly
    without writing it, and yields the three reductions <g, x>, <d', x> and ||d'||^2; pass 2 writes d'
    and x. Arithmetic runs in the scalars' precision. lrs, weight decays and bounds come as 0-dim
    tensors, so that one graph serves every value."""
    dtype = loss.dtype
    xs, gs, ds = flat(params), flat(grads), flat(exp_avgs)
    k = step + 1  # the index of this step, if it is taken
    w = first_step_weight(k, beta, bias_correction)

    def averaged(d: Tensor, g: Tensor) -> Tensor:
        return (1 - w) * d.to(dtype) + w * g.to(dtype)

    reductions = torch.zeros(3, dtype=dtype, device=loss.device)
    for x, g, d in zip(xs, gs, ds):
        new_d, x_ = averaged(d, g), x.to(dtype)
        # One stack per tensor: inductor then computes its three sums in one loop (summed one by one
        # over the list, each sum would get a loop of its own: three reads of the tensor).
        sums = torch.stack([(g.to(dtype) * x_).sum(), (new_d * x_).sum(), (new_d * new_d).sum()])
        reductions = reductions + sums
    grad_dot_x, d_dot_x, d_sq_norm = reductions.unbind()

    ok = torch.isfinite(loss) & torch.isfinite(grad_dot_x)
    new_loss_avg = (1 - w) * loss_avg + w * loss
    new_gamma = (1 - w) * gamma + w * grad_dot_x
    rho = 1 - torch.pow(beta, k) if bias_correction else torch.ones_like(k)
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
    for group_params, group_grads, group_avgs, lr, wd, tau in reversed(
        list(zip(params, grads, exp_avgs, lrs, weight_decays, taus))
    ):
        decay = 1 / (1 + lr * wd)  # a product per element is cheaper than a division
        for x, g, d in reversed(list(zip(group_params, group_grads, group_avgs))):
            new_d = averaged(d, g)
            x.copy_(torch.where(ok, (x - tau * new_d) * decay, x))
            d.copy_(torch.where(ok, new_d, d))
    loss_avg.copy_(torch.where(ok, new_loss_avg, loss_avg))
    gamma.copy_(torch.where(ok, new_gamma, gamma))
    step.copy_(torch.where(ok, k, step))
    return taus, t1s, new_lbs
