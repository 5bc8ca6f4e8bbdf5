"""The training loop on a toy task: metrics, step-size diagnostics, trace, divergence, schedules."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from _toy_task import ToyTask

from experiments.runner import loop, optim
from momo import Momo


class DiagnosticSGD(torch.optim.SGD):
    """SGD that exposes made-up step sizes the way MoMo does: tau = min(lr, t1) with t1 from a list."""

    def __init__(self, params, lr: float, adaptive_steps: list[float]) -> None:
        super().__init__(params, lr=lr)
        self.adaptive_steps = iter(adaptive_steps)

    def step(self, closure=None):
        loss = super().step(closure)
        group = self.param_groups[0]
        t1 = torch.tensor(next(self.adaptive_steps))
        group["adaptive_step"] = t1
        group["step_size"] = torch.clamp(t1, max=group["lr"])
        return loss


def _run(
    task: ToyTask, optimizer_fn, *, seed: int = 0, trace_every: int = 1, schedule=None, **caps
) -> loop.Run:
    task.setup(torch.device("cpu"))
    torch.manual_seed(seed)
    model = task.build_model()
    optimizer = optimizer_fn(model.parameters())
    scheduler = (schedule or torch.optim.lr_scheduler.ConstantLR)(
        optimizer, factor=1.0, total_iters=0
    )
    return loop.Run(
        task=task,
        model=model,
        ddp_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule_interval="epoch",
        generator=torch.Generator().manual_seed(seed),
        autocast=contextlib.nullcontext,
        trace_every=trace_every,
        **caps,
    )


def _fit(run: loop.Run, epochs: int = 2) -> tuple[str, loop.TrainState]:
    state = loop.TrainState()
    status = loop.fit(run, state, epochs, on_epoch_end=lambda s: None)
    return status, state


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def test_fit_records_one_row_per_epoch_with_the_design_keys() -> None:
    status, state = _fit(_run(ToyTask(), _sgd), epochs=3)
    assert status == "completed"
    assert (state.epoch, state.step) == (3, 3 * 8)
    assert [row["epoch"] for row in state.metrics] == [1, 2, 3]
    for key in ("train/loss", "train/score", "val/loss", "val/score", "lr", "model_norm"):
        assert math.isfinite(state.metrics[-1][key]), key
    assert state.metrics[-1]["grad_norm"] > 0 and state.metrics[-1]["time_s"] > 0
    assert not any(key.startswith("optim/") for key in state.metrics[-1])  # SGD exposes none
    assert state.metrics[-1]["train/loss"] < state.metrics[0]["train/loss"]


def test_fit_same_seed_gives_identical_metrics_and_another_seed_does_not() -> None:
    _, a = _fit(_run(ToyTask(), _sgd, seed=0))
    _, b = _fit(_run(ToyTask(), _sgd, seed=0))
    _, c = _fit(_run(ToyTask(), _sgd, seed=1))
    assert _without_time(a.metrics) == _without_time(b.metrics)
    assert a.trace == b.trace
    assert _without_time(a.metrics) != _without_time(c.metrics)


def test_fit_summarises_step_sizes_from_the_param_groups() -> None:
    t1s = [0.05, 0.2, 0.5, 0.01] * 4  # lr 0.1 caps 0.2 and 0.5: half the steps
    make = lambda params: DiagnosticSGD(params, lr=0.1, adaptive_steps=t1s)  # noqa: E731
    _, state = _fit(_run(ToyTask(batch_size=32), make), epochs=1)
    row = state.metrics[0]
    assert row["optim/cap_fraction"] == 0.5
    assert row["optim/adaptive_step_min"] == pytest.approx(0.01)
    assert row["optim/adaptive_step_max"] == pytest.approx(0.5)
    assert row["optim/step_size_max"] == pytest.approx(0.1)
    assert row["optim/step_size_median"] == pytest.approx((0.05 + 0.1) / 2)
    assert "optim/lb_estimate" not in row
    assert [r["step_size"] for r in state.trace] == pytest.approx([0.05, 0.1, 0.1, 0.01])
    assert [r["adaptive_step"] for r in state.trace] == pytest.approx(t1s[:4])
    assert all(r["lb_estimate"] is None for r in state.trace)


def test_fit_with_momo_star_reads_tau_t1_and_the_lb_estimate() -> None:
    make = lambda params: Momo(params, lr=1.0, lb=-1.0, use_fstar=True)  # noqa: E731
    _, state = _fit(_run(ToyTask(), make), epochs=2)
    row = state.metrics[-1]
    assert 0 < row["optim/step_size_median"] <= 1.0
    assert row["optim/step_size_max"] <= row["optim/adaptive_step_max"]
    assert 0.0 <= row["optim/cap_fraction"] <= 1.0
    assert row["optim/lb_estimate"] >= -1.0  # lb_init is MoMo*'s floor
    assert (
        len({r["lb_estimate"] for r in state.trace}) > 1
    )  # a copy per step, not one shared tensor
    for r in state.trace:
        assert r["step_size"] <= r["adaptive_step"] + 1e-7 and r["step_size"] <= r["lr"] + 1e-7


def test_fit_thins_the_trace_to_every_kth_step() -> None:
    _, state = _fit(_run(ToyTask(), _sgd, trace_every=3), epochs=2)  # 16 steps
    assert [r["step"] for r in state.trace] == [1, 4, 7, 10, 13, 16]
    assert [r["epoch"] for r in state.trace] == [1, 1, 1, 2, 2, 2]
    assert all(set(r) == {"step", "epoch", "loss", "lr", "step_size", "adaptive_step",
                          "lb_estimate"} for r in state.trace)  # fmt: skip


def test_fit_stops_on_a_non_finite_loss_as_diverged() -> None:
    status, state = _fit(_run(ToyTask(nan_at_step=3), _sgd, trace_every=2), epochs=5)
    assert status == "diverged"
    assert state.epoch == 1  # stopped at the trace point after step 3, not after 5 epochs
    assert [r["step"] for r in state.trace] == [1, 3]
    assert math.isnan(state.trace[-1]["loss"])
    assert math.isnan(state.metrics[-1]["train/loss"])


def test_fit_detects_a_non_finite_loss_between_trace_points() -> None:
    status, state = _fit(_run(ToyTask(nan_at_step=2), _sgd, trace_every=100), epochs=3)
    assert status == "diverged" and state.epoch == 1


def test_fit_stops_each_epoch_at_max_train_batches() -> None:
    status, state = _fit(_run(ToyTask(), _sgd, max_train_batches=3), epochs=2)
    assert status == "completed" and (state.epoch, state.step) == (2, 6)
    assert [r["step"] for r in state.trace] == [1, 2, 3, 4, 5, 6]
    assert _run(ToyTask(), _sgd, max_train_batches=100).batches_per_epoch == 8  # the task's 8


def test_evaluate_runs_in_eval_mode_without_gradients_and_returns_to_train_mode() -> None:
    seen = []

    class Watched(ToyTask):
        def eval_sums(self, model, batch):
            seen.append((model.training, torch.is_grad_enabled()))
            return super().eval_sums(model, batch)

    run = _run(Watched(), _sgd)
    row = loop.evaluate(run)
    assert seen == [(False, False)] * 4  # two batches of each split
    assert run.model.training
    assert set(row) == {"train/loss", "train/score", "val/loss", "val/score"}
    seen.clear()
    capped = _run(Watched(), _sgd, max_eval_batches=1)
    loop.evaluate(capped)
    assert len(seen) == 2  # one batch of each split


def test_evaluate_split_adds_the_batch_sums_and_divides_by_the_count() -> None:
    task = ToyTask()
    run = _run(task, _sgd)
    run.model.eval()
    with torch.no_grad():
        row = loop.evaluate_split(task, run.model, "val")
        logits = run.model(task.x_val)
    assert row["loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, task.y_val).item()
    )
    accuracy = (logits.argmax(1) == task.y_val).float().mean().item()
    assert row["score"] == pytest.approx(accuracy)


def test_fit_steps_an_epoch_schedule_once_per_epoch() -> None:
    def schedule(optimizer, **_):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    _, state = _fit(_run(ToyTask(), _sgd, schedule=schedule), epochs=3)
    assert [row["lr"] for row in state.metrics] == pytest.approx([0.1, 0.05, 0.025])


def test_warmup_cosine_ramps_then_decays_to_the_final_factor() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = optim.warmup_cosine(opt, warmup=2, total=6, start_factor=0.1, final_factor=0.0)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.2, 1.1, 2.0])
    assert lrs[4] == pytest.approx(1.0)  # half-way through the cosine
    assert lrs[6] == pytest.approx(0.0, abs=1e-12)


def test_warmup_inverse_sqrt_peaks_at_warmup_then_decays_as_one_over_sqrt_t() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = optim.warmup_inverse_sqrt(opt, warmup=4)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[15] == pytest.approx(math.sqrt(4 / 16))
    restored = optim.warmup_inverse_sqrt(opt, warmup=4)
    restored.load_state_dict(sched.state_dict())  # a checkpoint can hold it
    assert restored.last_epoch == sched.last_epoch
