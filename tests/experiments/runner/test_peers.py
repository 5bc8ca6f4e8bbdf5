"""The learning-rate-free peers through the runner: their configs, the calls the loop makes for them
(experiments/runner/peers.py), their records and step sizes, and the memory they keep."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import pytest
import torch
from _toy_task import ToyTask, compose_config, evaluate, toy_config
from omegaconf import OmegaConf
from record_schema import check_record
from torch import nn

from experiments.analysis.spec import load_spec
from experiments.runner import loop, optim, peers, records, train
from experiments.runner.sweep import load_sweep
from momo import Momo

PEERS = ["prodigy", "dadapt_adam", "dadapt_sgd", "sf_adamw", "sf_sgd", "dog", "dowg"]
LR_FREE_SWEEPS = [
    "lr_free", "lr_free_cifar10_resnet20", "lr_free_cifar100_resnet110",
    "lr_free_imagenet32_resnet18",
]  # fmt: skip


def _optimizer(name: str, params, *overrides: str) -> torch.optim.Optimizer:
    node = compose_config("experiment=lr_free", f"optimizer={name}", *overrides).optimizer
    return optim.build_optimizer(node, params)


def _same(value, default) -> bool:
    if isinstance(default, tuple):
        return list(default) == value
    return value == default


@pytest.mark.parametrize("name", PEERS)
def test_peer_config_is_its_authors_class_with_their_defaults(name: str) -> None:
    node = OmegaConf.to_container(
        compose_config("experiment=lr_free", f"optimizer={name}").optimizer
    )
    assert node.pop("name") == name and node.pop("_partial_") is True
    for target, kwargs in [(node.pop("_target_"), node), *_averager(node)]:
        signature = inspect.signature(hydra.utils.get_class(target)).parameters
        for key, value in kwargs.items():
            if key == "lr" and key not in signature:
                assert name == "dowg"  # ScalarDoWG takes **kwargs and ignores lr
                continue
            assert _same(value, signature[key].default), (target, key, value)


def _averager(node: dict) -> list[tuple[str, dict]]:
    averager = node.pop("averager", None)
    if averager is None:
        return []
    assert averager.pop("_partial_") is True
    return [(averager.pop("_target_"), averager)]


def test_only_schedule_free_has_modes_and_only_dog_an_averager() -> None:
    names = [*PEERS, "momo", "momo_adam", "adam", "sgd_m"]
    modes = {
        n for n in names if peers.is_schedule_free(_optimizer(n, nn.Linear(3, 2).parameters()))
    }
    averaged = {
        n
        for n in names
        if compose_config("experiment=lr_free", f"optimizer={n}").optimizer.get("averager")
    }
    assert modes == {"sf_adamw", "sf_sgd"} and averaged == {"dog"}


# --- the step size each peer exposes, checked against how far it moves the parameters ------------


def _grad_step(opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One step on 0.5·||x - target||² ; returns the gradient it stepped with."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * (x - target).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return x.grad.detach().clone()


def test_dog_step_size_is_the_step_it_takes() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _optimizer("dog", [x], "optimizer.reps_rel=1e-2")
    target = torch.tensor([0.3, 0.1, -0.2])
    for _ in range(4):
        before = x.detach().clone()
        grad = _grad_step(opt, x, target)
        step = peers.step_diagnostics(opt)["step_size"]
        torch.testing.assert_close(x.detach(), before - step * grad)


def test_dadapt_sgd_step_size_is_the_weight_of_the_next_gradient() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _optimizer("dadapt_sgd", [x])  # momentum 0: x = x_0 - sum of weighted gradients
    target = torch.tensor([0.3, 0.1, -0.2])
    _grad_step(opt, x, target)
    for _ in range(4):
        step = float(peers.step_diagnostics(opt)["step_size"])  # d·lr/||g_0|| after the last step
        before = x.detach().clone()
        grad = _grad_step(opt, x, target)
        torch.testing.assert_close(x.detach(), before - step * grad)


def test_schedule_free_step_size_is_the_warmed_up_lr_of_its_z_step() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _optimizer("sf_sgd", [x], "optimizer.lr=0.2", "optimizer.warmup_steps=4")
    peers.train_mode(opt, nn.Identity())
    target = torch.tensor([0.3, 0.1, -0.2])
    steps = []
    for _ in range(6):
        z = opt.state[x]["z"].clone() if "z" in opt.state[x] else x.detach().clone()
        grad = _grad_step(opt, x, target)
        steps.append(peers.step_diagnostics(opt)["step_size"])
        torch.testing.assert_close(opt.state[x]["z"], z - steps[-1] * grad)
    assert steps == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])


def test_dowg_step_size_is_the_factor_of_its_clipped_gradient() -> None:
    x = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    opt = _optimizer("dowg", [x])
    target = torch.tensor([0.1, 0.1, 0.0])  # gradients below the 0.5 clip
    for _ in range(4):
        before = x.detach().clone()
        grad = _grad_step(opt, x, target)
        step = peers.step_diagnostics(opt)["step_size"]
        assert step.dim() == 0
        torch.testing.assert_close(x.detach(), before - step * grad)


def test_prodigy_step_size_is_the_lr_of_its_next_adam_step() -> None:
    """Prodigy steps x -= d·lr · m / (sqrt(v) + d·eps) with the d of the previous step."""
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _optimizer("prodigy", [x], "optimizer.lr=10")
    target = torch.tensor([0.3, 0.1, -0.2])
    _grad_step(opt, x, target)
    for _ in range(4):
        step = float(peers.step_diagnostics(opt)["step_size"])
        before = x.detach().clone()
        _grad_step(opt, x, target)
        state, d = opt.state[x], opt.param_groups[0]["d"]
        assert d > 1e-6  # d has grown from d0: the step is the estimate, not the knob
        denom = state["exp_avg_sq"].sqrt() + d * opt.param_groups[0]["eps"]
        torch.testing.assert_close(x.detach(), before - step * state["exp_avg"] / denom)


def test_dadapt_adam_step_size_is_the_weight_of_the_next_gradient_in_its_momentum() -> None:
    """D-Adapt-Adam folds d·lr into its first moment: m = beta1·m + (1 - beta1)·d·lr·g."""
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _optimizer("dadapt_adam", [x], "optimizer.lr=10")
    beta1 = opt.param_groups[0]["betas"][0]
    target = torch.tensor([0.3, 0.1, -0.2])
    _grad_step(opt, x, target)
    for _ in range(4):
        step = float(peers.step_diagnostics(opt)["step_size"])
        m = opt.state[x]["exp_avg"].clone()
        grad = _grad_step(opt, x, target)
        torch.testing.assert_close(opt.state[x]["exp_avg"], beta1 * m + (1 - beta1) * step * grad)
    assert opt.param_groups[0]["d"] > 1e-6


def test_step_diagnostics_leave_momo_and_plain_optimizers_as_they_are() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    momo, sgd = Momo([x], lr=0.1), torch.optim.SGD([x], lr=0.1, momentum=0.9)
    for opt in (momo, sgd):
        _grad_step(opt, x, torch.zeros(2))
    assert peers.step_diagnostics(momo) is momo.param_groups[0]  # tau, t1 as MoMo leaves them
    assert peers.step_diagnostics(sgd) is sgd.param_groups[0] and peers.effective_step(sgd) is None


# --- the loop's calls: Schedule-Free's modes, its BatchNorm statistics, DoG's averaged model -----


@dataclass(kw_only=True)
class SpyTask(ToyTask):
    """ToyTask that records, for every evaluation batch, the model it is handed and its state."""

    batch_norm: bool = False
    optimizer: torch.optim.Optimizer | None = field(default=None, init=False)
    seen: list[dict] = field(default_factory=list, init=False)

    def build_model(self) -> nn.Module:
        if not self.batch_norm:
            return super().build_model()
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def eval_sums(self, model: nn.Module, batch) -> dict:
        group = self.optimizer.param_groups[0] if self.optimizer is not None else {}
        self.seen.append(
            {
                "model": model,
                "training": model.training,
                "train_mode": group.get("train_mode"),
                "params": [p.detach().clone() for p in model.parameters()],
            }
        )
        return super().eval_sums(model, batch)


def _run(task: SpyTask, name: str, *overrides: str) -> loop.Run:
    task.setup(torch.device("cpu"))
    model = task.build_model()
    node = compose_config("experiment=lr_free", f"optimizer={name}", *overrides).optimizer
    task.optimizer = optim.build_optimizer(node, model)
    return loop.Run(
        task=task,
        model=model,
        ddp_model=model,
        optimizer=task.optimizer,
        scheduler=torch.optim.lr_scheduler.ConstantLR(task.optimizer, factor=1.0, total_iters=0),
        schedule_interval="epoch",
        generator=torch.Generator().manual_seed(0),
        autocast=contextlib.nullcontext,
        averager=peers.build_averager(node.get("averager"), model),
    )


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_loop_evaluates_schedule_free_at_x_in_eval_mode_and_trains_at_y() -> None:
    task = SpyTask(dropout=0.0)
    run = _run(task, "sf_adamw", "optimizer.lr=0.01")
    status = loop.fit(run, loop.TrainState(), 2, on_epoch_end=lambda state: None)

    assert status == "completed" and len(task.seen) == 2 * 2 * 2  # epochs x splits x batches
    assert all(s["model"] is run.model for s in task.seen)
    assert not any(s["training"] or s["train_mode"] for s in task.seen)  # model and optimizer
    assert run.model.training and run.optimizer.param_groups[0]["train_mode"]  # back after it
    y = _params(run.model)
    run.optimizer.eval()  # x, where the authors evaluate
    for evaluated, x, y_i in zip(task.seen[-1]["params"], _params(run.model), y, strict=True):
        torch.testing.assert_close(evaluated, x)  # y -> x -> y -> x rounds in the last bits
        assert (x - y_i).abs().max() > 1e-4


def test_loop_recomputes_batch_norm_statistics_for_schedule_free_only() -> None:
    for name, forwards in [("sf_sgd", 8), ("adam", 0), ("dog", 0)]:  # 8: the whole toy epoch (< 50)
        task = SpyTask(batch_norm=True, dropout=0.0)
        run = _run(task, name)
        loop.train_epoch(run, epoch=1, first_step=1)
        before = task.steps
        loop.evaluate(run)
        assert task.steps - before == forwards, name


def test_evaluation_recomputes_batch_norm_statistics_at_x_not_y() -> None:
    task = SpyTask(batch_norm=True, dropout=0.0)
    run = _run(task, "sf_sgd", "optimizer.lr=0.5")
    loop.train_epoch(run, epoch=1, first_step=1)
    batches = [torch.randn(16, 10, generator=torch.Generator().manual_seed(i)) for i in range(60)]
    forward = lambda model, batch: model(batch)  # noqa: E731
    at_y = copy.deepcopy(run.model)

    with torch.no_grad(), peers.evaluation(run.optimizer, run.model, None, batches, forward) as m:
        x = _params(m)
        statistics = [m[1].running_mean.clone(), m[1].running_var.clone()]
        assert not m.training

    expected = {"x": copy.deepcopy(at_y), "y": copy.deepcopy(at_y)}
    with torch.no_grad():
        for p, value in zip(expected["x"].parameters(), x, strict=True):
            p.copy_(value)
    for model in expected.values():
        peers.recompute_batch_norm(model, forward, batches)  # the README's recipe, 50 batches
    torch.testing.assert_close(statistics[0], expected["x"][1].running_mean)
    torch.testing.assert_close(statistics[1], expected["x"][1].running_var)
    assert not torch.allclose(statistics[0], expected["y"][1].running_mean)
    assert run.model.training and run.optimizer.param_groups[0]["train_mode"]


def test_loop_evaluates_dogs_averaged_model_and_steps_the_averager() -> None:
    task = SpyTask(dropout=0.0)
    run = _run(task, "dog", "optimizer.reps_rel=1e-3")
    state = loop.TrainState()
    loop.fit(run, state, 1, on_epoch_end=lambda state: None)

    averaged = run.averager.averaged_model
    assert run.averager.t == state.step + 1 == 9  # one averager step after each of the 8 steps
    assert all(s["model"] is averaged and not s["training"] for s in task.seen)
    assert run.model.training
    assert not all(torch.equal(a, b) for a, b in zip(_params(averaged), _params(run.model)))
    direct = evaluate(task, averaged, "val")
    assert state.metrics[-1]["val/loss"] == pytest.approx(direct["loss"])
    assert state.metrics[-1]["val/loss"] != pytest.approx(evaluate(task, run.model, "val")["loss"])


def test_evaluation_returns_to_training_mode_after_an_exception() -> None:
    model = nn.Linear(3, 1)
    opt = _optimizer("sf_adamw", model.parameters())
    peers.train_mode(opt, model)
    _grad_step(opt, model.weight, torch.zeros(1, 3))
    y = _params(model)
    with pytest.raises(RuntimeError), peers.evaluation(opt, model):
        assert not opt.param_groups[0]["train_mode"]
        raise RuntimeError("evaluation failed")
    assert model.training and opt.param_groups[0]["train_mode"]
    for a, b in zip(_params(model), y, strict=True):
        torch.testing.assert_close(a, b)


class Preempted(BaseException):
    """Stands for SIGKILL: not an Exception, so the runner records nothing."""


def _metrics(cfg) -> list[dict]:
    lines = records.run_paths(cfg).metrics.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


@pytest.mark.parametrize("name", PEERS)
def test_train_resumes_each_peer_bit_exactly(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer's state, Schedule-Free's mode and DoG's average all travel in the checkpoint."""
    overrides = (f"optimizer={name}", "epochs=3", "optimizer.lr=0.5")
    reference = toy_config(tmp_path / "a", *overrides)
    assert train.train(reference)["status"] == "completed"
    cfg = toy_config(tmp_path / "b", *overrides)
    save = records.save_checkpoint

    def save_then_die(paths, state):
        save(paths, state)
        if state["state"]["epoch"] == 1:
            raise Preempted

    monkeypatch.setattr(records, "save_checkpoint", save_then_die)
    with pytest.raises(Preempted):
        train.train(cfg)
    monkeypatch.setattr(records, "save_checkpoint", save)
    assert train.train(cfg)["status"] == "completed"
    assert _metrics(cfg) == _metrics(reference)


# --- the command line: a one-epoch smoke run of every peer, its record and its step size --------


@pytest.mark.slow  # seven processes: about 10 s
def test_cli_smoke_run_of_every_peer_records_its_step_size(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", "experiment=lr_free",
         f"optimizer={','.join(PEERS)}", "profile=smoke", "epochs=1",
         f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = {}
    for record in (tmp_path / "runs" / "lr_free").iterdir():
        if record.name.startswith("."):
            continue
        info = check_record(record)
        found[info["optimizer"]] = info
        assert info["status"] == "completed", info["error"]
        assert info["data"]["synthetic"] is True and info["profile"] == "smoke"
        final = info["final"]
        assert final["optim/step_size_min"] > 0 and math.isfinite(final["optim/step_size_max"])
        trace = (record / "trace.csv").read_text().splitlines()
        column = trace[0].split(",").index("step_size")
        assert all(float(row.split(",")[column]) > 0 for row in trace[1:])
    assert sorted(found) == sorted(PEERS)


@pytest.mark.slow  # a ResNet20 on CPU: about 10 s
def test_smoke_run_of_schedule_free_and_dog_on_a_batch_norm_resnet(tmp_path: Path) -> None:
    for name in ("sf_adamw", "dog"):
        cfg = compose_config(
            "experiment=lr_free_cifar10_resnet20", f"optimizer={name}", "profile=smoke",
            "epochs=1", f"results_dir={tmp_path}", "optimizer.warmup_steps=2" if name == "sf_adamw"
            else "optimizer.reps_rel=1e-4",
        )  # fmt: skip
        info = train.train(cfg)
        assert info["status"] == "completed", info["error"]
        assert check_record(records.run_paths(cfg).record) == info
        assert info["final"]["optim/step_size_median"] > 0


# --- the figure's sweeps: every method over its own knob, 6 decades around its default ----------


@pytest.mark.parametrize("sweep", LR_FREE_SWEEPS)
def test_lr_free_sweep_spans_six_decades_centred_on_each_default(sweep: str) -> None:
    blocks = load_sweep(sweep)
    spec = load_spec(sweep)
    assert {b.optimizer for b in blocks} == set(spec.methods) | set(spec.extras.methods)
    for block in blocks:
        grid = sorted(block.params["optimizer.lr"])
        default = compose_config(f"experiment={sweep}", f"optimizer={block.optimizer}").optimizer.lr
        decades = [math.log10(lr / default) for lr in grid]
        assert decades == pytest.approx([-3, -2, -1, 0, 1, 2, 3]), (sweep, block.optimizer)
        assert len(block.params["seed"]) == (1 if "imagenet32" in sweep else 3)


# --- memory --------------------------------------------------------------------------------------


def test_state_bytes_counts_each_storage_once_and_never_a_parameter() -> None:
    w = torch.nn.Parameter(torch.randn(10, 100))
    b = torch.nn.Parameter(torch.randn(100))
    sgd = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
    adam = torch.optim.Adam([w, b], lr=0.1)
    for opt in (sgd, adam):
        _grad_step(opt, w, torch.zeros(10, 100))
    assert peers.state_bytes(sgd) == 4 * 1000  # w's momentum buffer (b had no gradient)
    assert peers.state_bytes(adam) == 8 * 1000 + 4  # two moments and a float32 step count
    assert peers.state_bytes_per_parameter(sgd) == pytest.approx(4000 / 1100)

    sgd.state[w]["alias"] = w.detach()  # a view of the parameter itself costs nothing
    sgd.state[w]["again"] = sgd.state[w]["momentum_buffer"]  # nor does a second reference
    sgd.param_groups[0]["kept"] = [torch.zeros(5), torch.zeros(5)]  # tensors in a param group do
    assert peers.state_bytes(sgd) == 4 * 1000 + 2 * 4 * 5


def test_state_bytes_counts_dogs_x0_and_averaged_model() -> None:
    model = nn.Linear(10, 5)  # 55 parameters in two tensors
    opt = _optimizer("dog", model.parameters())
    averager = peers.build_averager(
        compose_config("experiment=lr_free", "optimizer=dog").optimizer.averager, model
    )
    x, y = torch.randn(4, 10), torch.randn(4, 5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    peers.after_step(averager)
    alone = peers.state_bytes(opt)
    assert alone == 4 * 55 + 3 * 4  # x_0, and rbar, G and eta (one tensor, listed per parameter)
    assert peers.state_bytes(opt, averager) == alone + 4 * 55


@pytest.mark.slow
def test_optimizer_memory_script_measures_each_named_optimizer() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/optimizer_memory.py", "adam", "sf_sgd", "prodigy"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        cells[1]: float(cells[2])
        for line in result.stdout.splitlines()
        if (cells := [c.strip() for c in line.split("|")]) and len(cells) > 3
        and cells[1] in ("adam", "sf_sgd", "prodigy")
    }  # fmt: skip
    assert rows == {"adam": 8.0, "sf_sgd": 4.0, "prodigy": 16.0}


# --- divergence: an optimizer that raises on a non-finite gradient -----------------------------


def test_train_records_dog_raising_on_a_non_finite_gradient_as_diverged(tmp_path: Path) -> None:
    """DoG asserts `G > 0` when a gradient is NaN: that is the run diverging, not failing (a failed
    record would be retried by every rerun of the sweep, and fail again)."""
    info = train.train(toy_config(tmp_path, "optimizer=dog", "optimizer.lr=1e12", "epochs=3"))
    assert info["status"] == "diverged" and info["epochs_done"] == 1 and info["error"] is None


def test_train_records_an_optimizer_raising_on_finite_gradients_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self, closure=None):
        closure()
        raise AssertionError("a bug in the optimizer")

    monkeypatch.setattr(torch.optim.SGD, "step", refuse)
    info = train.train(toy_config(tmp_path, "optimizer=sgd_m"))
    assert info["status"] == "failed" and "a bug in the optimizer" in info["error"]
