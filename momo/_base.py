"""What Momo and MomoAdam share: the loss argument, the global model state, gathering and validation.

MoMo's model of the loss is global: the loss average ``fbar``, the average ``gamma`` of <g, x> and the step
counter ``k`` are scalars shared by every param group (inner products and norms run over all parameters).
They live in ``self.state["momo"]``, a non-parameter entry that ``Optimizer.state_dict()`` saves under its
string key and ``load_state_dict()`` restores as is, so a checkpoint resumes the averages bit-exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

GLOBAL_STATE = "momo"  # key of the all-groups state in ``self.state``

# Hyperparameters that enter the global averages: one value for all param groups.
_SHARED_HYPERPARAMETERS = ("beta", "betas", "bias_correction")

_MISSING_LOSS = (
    "MoMo needs the loss of the current batch to compute its step size. Pass it in one of two ways:\n"
    "    loss = model_loss(...); loss.backward(); optimizer.step(loss=loss)\n"
    "or\n"
    "    def closure():\n"
    "        optimizer.zero_grad()\n"
    "        loss = model_loss(...)\n"
    "        loss.backward()\n"
    "        return loss\n"
    "    optimizer.step(closure)"
)


def check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")


def check_beta(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1))")


def check_finite(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number)")


def scalar_dtype(param: Tensor) -> torch.dtype:
    """The dtype of the global scalars (loss average, gamma, reductions): float64 for double-precision
    parameters, float32 otherwise (also for bf16 and fp16, whose range a sum of squares would overflow)."""
    return torch.float64 if param.dtype in (torch.float64, torch.complex128) else torch.float32


def _real_views(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


class MomoBase(Optimizer):
    """Book-keeping shared by Momo and MomoAdam; subclasses implement ``_update(loss)``."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        sync_loss: bool,
        process_group: Any,
    ) -> None:
        super().__init__(params, defaults)
        # Not hyperparameters of the algorithm but of the environment, so not part of state_dict().
        self.sync_loss = sync_loss
        self.process_group = process_group

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer keeps only defaults, state and param_groups. A process group cannot be
        # pickled: a copy (copy.deepcopy, pickle) averages the loss over the default group, the world.
        return {**super().__getstate__(), "sync_loss": self.sync_loss}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.sync_loss = state.get("sync_loss", True)
        self.process_group = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        first, new = self.param_groups[0], self.param_groups[-1]
        for key in _SHARED_HYPERPARAMETERS:
            if key in first and new[key] != first[key]:
                self.param_groups.pop()
                raise ValueError(
                    f"Invalid {key}: {new[key]} in a param group, while the first group has "
                    f"{first[key]}. MoMo's loss average is global, so {key} must be the same in every group."
                )
        for key in ("lr", "weight_decay"):
            if isinstance(new[key], Tensor):
                self.param_groups.pop()
                raise ValueError(f"Invalid {key}: a tensor; MoMo takes {key} as a Python float")

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor | float] | None = None,
        loss: Tensor | float | None = None,
    ) -> Tensor | float:
        """Take one step. Give exactly one of ``closure`` (which runs forward and backward and returns the
        loss) or ``loss`` (the batch loss, after ``loss.backward()``). Returns the loss."""
        if (closure is None) == (loss is None):
            given = "both closure and loss" if closure is not None else "neither closure nor loss"
            raise ValueError(f"{_MISSING_LOSS}\n(got {given})")
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if loss is None:
                name = getattr(closure, "__qualname__", type(closure).__name__)
                raise ValueError(
                    f"{_MISSING_LOSS}\n(the closure {name} returned None: it must return the loss)"
                )
        self._update(self._as_loss_tensor(loss))
        return loss

    def _update(self, loss: Tensor) -> None:
        raise NotImplementedError

    def _gather(
        self, group: dict[str, Any], state_keys: Sequence[str]
    ) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]]]:
        """The params of ``group`` that have a gradient, their gradients, and for each of ``state_keys``
        the list of that state tensor, created as zeros on first use. Complex tensors are viewed as real
        ones (``torch.view_as_real``), as torch.optim does: MoMo sees a complex number as two real
        coordinates, so a complex parameter steps exactly as its real view would."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        param_states: list[dict[str, Tensor]] = []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}): its inner products and norms need dense ones"
                )
            state = self.state[p]
            if not state:
                for key in state_keys:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(grad)
            param_states.append(state)
        states = [[state[key] for state in param_states] for key in state_keys]
        if any(p.dtype.is_complex for p in params):
            params, grads = _real_views(params), _real_views(grads)
            states = [_real_views(collected) for collected in states]
        return params, grads, states

    def _publish(
        self, taus: list[Tensor], t1s: list[Tensor], lb_estimates: list[Tensor | None]
    ) -> None:
        """The step-size diagnostics of docs/design.md §1, one set per param group: fresh tensors that no
        later step changes, so a logger may keep them and read them (with a host sync) when it likes."""
        for group, tau, t1, lb in zip(self.param_groups, taus, t1s, lb_estimates):
            group["step_size"], group["adaptive_step"] = tau, t1
            if lb is not None:
                group["lb_estimate"] = lb

    def _first_param(self) -> Tensor | None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    return p
        return None

    def _as_loss_tensor(self, loss: Any) -> Tensor:
        """The loss as a 0-dim tensor on the parameters' device, averaged over data-parallel ranks."""
        p = self._first_param()
        device = p.device if p is not None else torch.device("cpu")
        dtype = scalar_dtype(p) if p is not None else torch.float32
        if isinstance(loss, Tensor):
            if loss.numel() != 1 or loss.is_complex() or loss.dtype == torch.bool:
                raise ValueError(
                    f"Invalid loss: a {loss.dtype} tensor of shape {tuple(loss.shape)}; MoMo needs "
                    "the batch loss as one real number (a tensor with one element, or a float)"
                )
            loss = loss.detach().reshape(()).to(device=device, dtype=dtype)
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            # torch.full fills on the device: no host-to-device copy, which would wait on a GPU
            loss = torch.full((), float(loss), device=device, dtype=dtype)
        else:
            raise ValueError(
                f"Invalid loss: {loss!r} (a {type(loss).__name__}); MoMo needs the batch loss as one "
                "real number (a tensor with one element, or a float)"
            )
        if self.sync_loss and dist.is_available() and dist.is_initialized():
            world = dist.get_world_size(self.process_group)
            if world > 1:
                # Every rank must see the same loss to take the same step (its gradients are already
                # averaged by DDP). SUM then divide: ReduceOp.AVG exists on NCCL only.
                loss = loss.clone()
                dist.all_reduce(loss, op=dist.ReduceOp.SUM, group=self.process_group)
                loss = loss / world
        return loss

    def _global_state(self, like: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """The all-groups scalars, created on the first step and moved to the parameters' device after a
        load_state_dict from another device (load_state_dict copies non-parameter state as is)."""
        state = self.state[GLOBAL_STATE]
        if not state:
            zero = torch.zeros((), device=like.device, dtype=loss.dtype)
            state.update(step=zero.clone(), loss_avg=zero.clone(), gamma=zero.clone())
        elif state["step"].device != like.device:
            for key, value in state.items():
                state[key] = value.to(like.device)
        return state

    def _lb_estimates(self, loss: Tensor) -> list[Tensor | None]:
        """MoMo*'s running lower bound per param group (None where use_fstar is off), initialised at the
        group's ``lb``, which stays its floor."""
        state = self.state[GLOBAL_STATE]
        estimates: list[Tensor | None] = []
        for i, group in enumerate(self.param_groups):
            key = f"lb_estimate.{i}"
            if group["use_fstar"] and key not in state:
                state[key] = torch.full(
                    (), float(group["lb"]), device=loss.device, dtype=loss.dtype
                )
            estimates.append(state[key] if group["use_fstar"] else None)
        return estimates
