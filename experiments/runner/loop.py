"""The training loop: one explicit epoch loop, the same for every optimizer.

Every optimizer is stepped as `optimizer.step(closure)`. After each step the loop reads the step-size
diagnostics that an optimizer may leave in its first param group (experiments.runner.diagnostics):
`step_size` (tau), `adaptive_step` (t1) and `lb_estimate`. It never asks which optimizer it runs: what
an optimizer needs beyond `step` (Schedule-Free's train/eval modes, DoG's averaged model, the step size
a learning-rate-free method exposes) goes through experiments.runner.peers.

No host sync per step: losses, gradient norms and diagnostics stay 0-dim tensors on the device and move
to the host once per epoch. The only other syncs are at the trace points (every `trace_every`-th step),
where the loss of the trace row is read and a non-finite loss stops the epoch.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from experiments.runner import distributed, peers
from experiments.runner.diagnostics import DIAGNOSTICS, step_statistics
from experiments.runner.distributed import DistContext
from experiments.tasks.base import SPLITS, Task

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a run trains with; built once by experiments.runner.train."""

    task: Task
    model: torch.nn.Module  # the bare model: evaluation, norms, checkpoints, artefacts
    ddp_model: (
        torch.nn.Module
    )  # what the loss is computed with: DDP's wrapper under torchrun, else model
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    schedule_interval: str  # "epoch" (the paper's protocol) or "step"
    generator: torch.Generator  # the data order and augmentation; same seed on every rank
    autocast: Callable[[], AbstractContextManager]
    dist: DistContext = field(default_factory=DistContext)
    trace_every: int = 1
    progress: bool = False
    name: str = ""  # the run's identity in log lines: `momo lr=1 seed=0`
    max_train_batches: int | None = None  # a smoke profile's caps; None: whole epochs and splits
    max_eval_batches: int | None = None
    averager: peers.Averager | None = None  # an iterate average evaluated instead (DoG's authors')

    @property
    def batches_per_epoch(self) -> int:
        return epoch_length(self.task, self.max_train_batches)


def epoch_length(task: Task, max_batches: int | None) -> int:
    """The optimizer steps of one epoch: the task's batches, at most `max_batches` of them."""
    full = task.batches_per_epoch()
    return full if max_batches is None else min(full, max_batches)


@dataclass
class TrainState:
    """What a checkpoint must restore besides the model, optimizer, scheduler and RNG states."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    metrics: list[dict] = field(default_factory=list)  # one row per epoch (metrics.jsonl)
    trace: list[dict] = field(default_factory=list)  # thinned per-step rows (trace.csv)
    wall_time_s: float = 0.0


def fit(
    run: Run, state: TrainState, epochs: int, on_epoch_end: Callable[[TrainState], None]
) -> str:
    """Trains from epoch `state.epoch + 1` to `epochs`; returns "completed" or "diverged"."""
    for epoch in range(state.epoch + 1, epochs + 1):
        start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]  # the lr this epoch trains with
        steps, diverged = train_epoch(run, epoch, first_step=state.step + 1)
        if run.schedule_interval == "epoch":
            run.scheduler.step()
        row = end_epoch(run, state, steps, evaluate(run), lr, time.perf_counter() - start, epochs)
        on_epoch_end(state)
        if diverged or not math.isfinite(row["train/loss"]):
            return "diverged"
    return "completed"


def end_epoch(
    run: Run,
    state: TrainState,
    steps: StepLog,
    metrics: dict[str, float],
    lr: float,
    time_s: float,
    epochs: int,
) -> dict:
    """The epoch's metrics.jsonl row from its evaluation `metrics` and step log, added to `state` with
    the epoch's trace rows, and logged; returns the row."""
    row = {"epoch": steps.epoch, **metrics, "lr": float(lr), "model_norm": _norm(run.model)}
    row |= steps.summary()
    row["time_s"] = time_s
    state.epoch, state.step = steps.epoch, state.step + steps.count
    state.metrics.append(row)
    state.trace.extend(steps.trace)
    state.wall_time_s += time_s
    _log_epoch(run.name, row, epochs, run.dist)
    return row


def train_epoch(run: Run, epoch: int, first_step: int) -> tuple[StepLog, bool]:
    """One pass over the task's training batches; returns the step log and whether the loss went
    non-finite (the epoch stops at the first trace point after that)."""
    peers.train_mode(run.optimizer, run.model)  # Schedule-Free's optimizer.train() too
    steps = StepLog(epoch)
    batches = itertools.islice(run.task.train_batches(run.generator), run.batches_per_epoch)
    if run.progress:
        batches = tqdm(
            batches, total=run.batches_per_epoch, desc=f"{run.name} epoch {epoch}", leave=False
        )
    for step, batch in enumerate(batches, start=first_step):
        if train_step(run, steps, step, batch):
            return steps.finish(), True
    return steps.finish(), steps.any_nonfinite(run.dist)


def train_step(run: Run, steps: StepLog, step: int, batch: Any) -> bool:
    """Optimizer step `step` on `batch`, recorded in `steps`; True when it is a trace point and a loss
    of the epoch so far was non-finite (the epoch stops there)."""
    if not run.task.shards_batches:
        batch = distributed.shard(batch, run.dist)
    closure = functools.partial(_closure, run, batch)
    try:
        loss = run.optimizer.step(closure)
    except Exception:
        # An optimizer may refuse a non-finite gradient (DoG asserts on it): the run diverged at this
        # step. The gradients are all-reduced, so every rank takes the same branch.
        if bool(torch.isfinite(_grad_norm(run.model))):
            raise
        log.warning("[%s] step %d: the optimizer raised on a non-finite gradient", run.name, step)
        return True
    peers.after_step(run.averager)
    steps.record(step, loss.detach(), peers.step_diagnostics(run.optimizer), _grad_norm(run.model))
    if run.schedule_interval == "step":
        run.scheduler.step()
    return is_trace_step(run, step) and steps.trace_point(step, run.dist)


def is_trace_step(run: Run, step: int) -> bool:
    """Whether step `step` (counted from 1 over the whole run) gets a trace row."""
    return (step - 1) % run.trace_every == 0


def _closure(run: Run, batch: Any) -> torch.Tensor:
    run.optimizer.zero_grad(set_to_none=True)
    with run.autocast():
        loss = run.task.loss(run.ddp_model, batch)
    loss.backward()
    return loss


def evaluate(run: Run) -> dict[str, float]:
    """The task's metrics on the training and validation sets, as `split/metric` keys, of the model
    that the optimizer's protocol evaluates (experiments/runner/peers.py: Schedule-Free's x, DoG's
    average); the model is in eval mode for it and back in train mode after it."""
    row = {}
    sample = _train_sample(run)  # Schedule-Free's BatchNorm statistics are recomputed on it
    with (
        torch.no_grad(),
        run.autocast(),
        peers.evaluation(run.optimizer, run.model, run.averager, sample, run.task.loss) as model,
    ):
        for split in SPLITS:
            metrics = evaluate_split(run.task, model, split, run.max_eval_batches, run.dist)
            row |= {f"{split}/{key}": value for key, value in metrics.items()}
    return row


def _train_sample(run: Run) -> Iterator[Any]:
    """Training batches in a fixed order that leaves the run's generator alone, this rank's share."""
    batches = run.task.train_batches(torch.Generator().manual_seed(0))
    for batch in itertools.islice(batches, run.batches_per_epoch):
        yield batch if run.task.shards_batches else distributed.shard(batch, run.dist)


def evaluate_split(
    task: Task,
    model: torch.nn.Module,
    split: str,
    max_batches: int | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """The task's metrics over at most `max_batches` evaluation batches of `split`: the per-batch sums
    of `task.eval_sums`, added up over the batches and the ranks and divided by their "count" (one host
    sync), or `task.evaluate` of the whole split for a task that does not evaluate by sums. The caller
    sets the model's mode and turns gradients off."""
    batches = itertools.islice(task.eval_batches(split), max_batches)
    if not task.eval_by_sums:
        return {key: float(value) for key, value in task.evaluate(model, batches).items()}
    totals: dict[str, torch.Tensor] = {}
    for batch in batches:
        for key, value in task.eval_sums(model, batch).items():
            totals[key] = value if key not in totals else totals[key] + value
    if "count" not in totals:
        raise ValueError(
            f"{type(task).__name__} gave no evaluation batch with a count for {split!r}"
        )
    totals = distributed.all_sum(totals, ctx or DistContext())
    count = totals.pop("count")
    means = torch.stack([value / count for value in totals.values()]).tolist()
    return dict(zip(totals, means, strict=True))


class StepLog:
    """Per-step values of one epoch, kept on the device until `finish()` moves them to the host."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.count = 0
        self._loss: list[torch.Tensor] = []
        self._grad_norm: list[torch.Tensor] = []
        self._diag: dict[str, list[torch.Tensor]] = {key: [] for key in DIAGNOSTICS}
        self._nonfinite: torch.Tensor | None = None  # any non-finite loss so far, on the device
        self._trace_index: list[int] = []
        self.trace: list[dict] = []
        self._host: dict[str, list[float]] = {}

    def record(self, step: int, loss: torch.Tensor, group: dict, grad_norm: torch.Tensor) -> None:
        self.count += 1
        self._loss.append(loss.float())
        bad = ~torch.isfinite(loss)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self._grad_norm.append(grad_norm)
        self._lr = float(group["lr"])
        for key in DIAGNOSTICS:
            if key in group:
                # A copy: an optimizer may update the tensor in place at the next step.
                self._diag[key].append(torch.as_tensor(group[key]).detach().float().clone())

    def trace_point(self, step: int, ctx: DistContext) -> bool:
        """Adds a trace row for the last step (its loss averaged over ranks); True if any loss of the
        epoch so far was non-finite."""
        loss, bad = distributed.all_mean(
            torch.stack([self._loss[-1], self._nonfinite.float()]), ctx
        ).tolist()
        self._trace_index.append(self.count - 1)
        self.trace.append({"step": step, "epoch": self.epoch, "loss": loss, "lr": self._lr})
        return bad > 0

    def any_nonfinite(self, ctx: DistContext) -> bool:
        if self._nonfinite is None:
            return False
        return distributed.all_mean(self._nonfinite.float(), ctx).item() > 0

    def finish(self) -> StepLog:
        """Moves the epoch's values to the host (one transfer per kind) and completes the trace rows."""
        self._host = {
            key: torch.stack(values).cpu().tolist()
            for key, values in [("grad_norm", self._grad_norm), *self._diag.items()]
            if len(values) == self.count and values
        }
        for row, i in zip(self.trace, self._trace_index, strict=True):
            row |= {key: self._host[key][i] if key in self._host else None for key in DIAGNOSTICS}
        return self

    def summary(self) -> dict[str, float]:
        """The epoch's `grad_norm` (mean over steps) and `optim/*` statistics of the diagnostics."""
        out: dict[str, float] = {}
        if "grad_norm" in self._host:
            out["grad_norm"] = statistics.fmean(self._host["grad_norm"])
        return out | step_statistics(self._host)


@torch.no_grad()
def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).float()


@torch.no_grad()
def _norm(model: torch.nn.Module) -> float:
    return torch.nn.utils.get_total_norm(list(model.parameters())).item()


def _log_epoch(name: str, row: dict, epochs: int, ctx: DistContext) -> None:
    if not ctx.is_main:
        return
    shown = ("train/loss", "train/score", "val/loss", "val/score", "lr", "optim/step_size_median")
    fields = " ".join(f"{k}={row[k]:.4g}" for k in shown if k in row)
    log.info("[%s] epoch %d/%d %s (%.1fs)", name, row["epoch"], epochs, fields, row["time_s"])


def snapshot(run: Run, state: TrainState) -> dict[str, Any]:
    """A checkpoint from which `restore` continues the run bit-exactly."""
    return {
        "state": asdict(state),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "averager": run.averager.state_dict() if run.averager is not None else None,
        "rng": rng_state(run.generator),
    }


def restore(run: Run, checkpoint: dict[str, Any]) -> TrainState:
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if run.averager is not None:
        run.averager.load_state_dict(checkpoint["averager"])
    restore_rng(checkpoint["rng"], run.generator)
    return TrainState(**checkpoint["state"])


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from: the data generator's and the global ones."""
    rng = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
