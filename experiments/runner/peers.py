"""What a training loop owes an optimizer beyond `step()`: the protocols of the learning-rate-free peers.

Prodigy, D-Adaptation, Schedule-Free, DoG and DoWG come from their authors' packages (configs/optimizer/),
and some of them need more of a loop than `optimizer.step(closure)`. Every function here takes one run's
optimizer and model (a batched runner calls them once per member, each member with its own optimizer
and averager) and recognises an optimizer by the documented attributes of its authors' class, never by
its class or its config name:

- **train/eval modes.** A schedule-free optimizer (schedulefree's `AdamWScheduleFree`, `SGDScheduleFree`)
  has `train()` and `eval()` methods that move the parameters between the point gradients are taken at
  (y) and the point to evaluate (x); its README asks for `optimizer.train()` wherever `model.train()` is
  called and `optimizer.eval()` wherever `model.eval()` is. `train_mode` and `evaluation` make these
  calls; with BatchNorm in the model, `evaluation` first recomputes the running statistics at x as the
  README's caveat does (train mode, no gradients, 50 training batches).
- **iterate averaging.** DoG's authors evaluate a polynomial-decay average of the iterates (their
  `PolynomialDecayAverager`: `step()` after every optimizer step, the average in `averaged_model`). The
  optimizer config declares it (`averager:`, a partial called with the model: `build_averager`);
  `after_step` steps it and `evaluation` hands out its averaged model.
- **the step size.** MoMo leaves the step it took in its param group (`step_size`, docs/design.md §1);
  the peers expose theirs in their own terms. `step_diagnostics` gives the loop param group 0 with
  `step_size` set to that step (`effective_step`), so that one diagnostic and one figure cover them all.
- **memory.** `state_bytes` measures what an optimizer (and its averager) keeps besides the parameters.

    averager = build_averager(cfg.optimizer.get("averager"), model)   # None without one
    train_mode(optimizer, model)
    for batch in batches:
        optimizer.step(closure)
        after_step(averager)
        log(step_diagnostics(optimizer))
    with torch.no_grad(), evaluation(optimizer, model, averager, train_batches, task.loss) as evaluated:
        metrics = evaluate(evaluated)
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

# Training batches forwarded to recompute BatchNorm statistics at a schedule-free optimizer's x
# (schedulefree's README, "Caveats").
BATCH_NORM_BATCHES = 50


class Averager(Protocol):
    """An iterate average kept beside the optimizer (dog.PolynomialDecayAverager has this interface)."""

    averaged_model: nn.Module

    def step(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state_dict: dict) -> None: ...


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer switches its parameters between a training and an evaluation point
    (`train()` and `eval()` methods, which torch's optimizers do not have)."""
    return callable(getattr(optimizer, "train", None)) and callable(
        getattr(optimizer, "eval", None)
    )


def build_averager(node: DictConfig | Mapping | None, model: nn.Module) -> Averager | None:
    """The iterate averager an optimizer config declares (`averager:` with `_target_` and
    `_partial_: true`), built on the (bare, not DDP-wrapped) model; None when it declares none."""
    if node is None:
        return None
    return hydra.utils.instantiate(node, _convert_="all")(model)


def train_mode(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Model and optimizer ready for training steps: `model.train()`, and `optimizer.train()` for a
    schedule-free optimizer (it refuses to step otherwise)."""
    model.train()
    if is_schedule_free(optimizer):
        optimizer.train()


def after_step(averager: Averager | None) -> None:
    """What follows every optimizer step: the averager's step (DoG's README)."""
    if averager is not None:
        averager.step()


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    forward: Callable[[nn.Module, Any], Any],
    batches: Iterable[Any],
    n_batches: int = BATCH_NORM_BATCHES,
) -> int:
    """Refreshes the BatchNorm running statistics at the current parameters: `forward(model, batch)` in
    train mode without gradients on the first `n_batches` batches; returns how many it forwarded."""
    model.train()
    count = 0
    for batch in itertools.islice(batches, n_batches):
        forward(model, batch)
        count += 1
    return count


@contextlib.contextmanager
def evaluation(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    averager: Averager | None = None,
    train_batches: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> Iterator[nn.Module]:
    """The model to evaluate, in eval mode: the averager's averaged model when there is one, else
    `model`, moved to a schedule-free optimizer's x (`optimizer.eval()`) with its BatchNorm statistics
    recomputed there on `train_batches` through `forward` (e.g. the task's loss). On exit, also after
    an exception, `model` and the optimizer are back in training mode (`train_mode`)."""
    if is_schedule_free(optimizer):
        optimizer.eval()
        if train_batches is not None and forward is not None and has_batch_norm(model):
            recompute_batch_norm(model, forward, train_batches)
    evaluated = averager.averaged_model if averager is not None else model
    evaluated.eval()
    try:
        yield evaluated
    finally:
        train_mode(optimizer, model)


def effective_step(optimizer: torch.optim.Optimizer) -> torch.Tensor | float | None:
    """The step size an optimizer's authors expose, after a step, from its param group 0 (or state);
    None for an optimizer that exposes none (SGD-M, Adam: their step is the lr).

    - Prodigy, D-Adaptation Adam: d·lr, the estimate d (after the step: the next step's) times the lr
      multiplier, the step of their Adam direction (bias correction, off by default, left out);
    - D-Adaptation SGD: d·lr/||g_0||, the weight of each gradient in its dual average (`g0_norm`);
    - Schedule-Free: `scheduled_lr`, the lr after the warmup (the authors log it);
    - DoG: eta = lr·rbar/sqrt(G) (LDoG: the first layer's);
    - DoWG (ScalarDoWG): r_t²/(sqrt(v_t) + epsilon), the factor of its clipped gradient.
    """
    group = optimizer.param_groups[0]
    if "d" in group:
        step = group["d"] * group["lr"]
        return step / group["g0_norm"] if "g0_norm" in group else step
    if "scheduled_lr" in group:
        return group["scheduled_lr"]
    if "eta" in group:
        return group["eta"][0]
    state = optimizer.state
    if "rt2" in state and "vt" in state and "epsilon" in group:
        return (state["rt2"] / (state["vt"].sqrt() + group["epsilon"])).reshape(())
    return None


def step_diagnostics(optimizer: torch.optim.Optimizer) -> Mapping[str, Any]:
    """Param group 0 as the loop's diagnostics read it (experiments/runner/diagnostics.py): MoMo's own
    keys as they are; for a peer, its `effective_step` as `step_size`."""
    group = optimizer.param_groups[0]
    if "step_size" in group:
        return group
    step = effective_step(optimizer)
    return group if step is None else {"lr": group["lr"], "step_size": step}


def state_bytes(optimizer: torch.optim.Optimizer, averager: Averager | None = None) -> int:
    """Bytes of the tensors an optimizer keeps besides the parameters and their gradients: its state,
    the tensors in its param groups (DoG keeps x_0 there) and an averager's model; each storage counted
    once (DoG's eta list repeats one tensor), a parameter never (an alias of it costs nothing)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    seen = {(p.device, p.untyped_storage().data_ptr()) for p in params}
    total = 0

    def visit(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = (value.device, value.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    visit(list(optimizer.state.values()))
    visit([{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups])
    if averager is not None:
        visit(averager.averaged_model.state_dict())
    return total


def state_bytes_per_parameter(
    optimizer: torch.optim.Optimizer, averager: Averager | None = None
) -> float:
    """`state_bytes` per parameter entry (fp32 Adam: 8, two copies of the parameters)."""
    n = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return state_bytes(optimizer, averager) / n
