"""The runner end to end: configs, records, resume, failures, W&B, the command line."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import hydra
import pytest
import torch
from _toy_task import CONFIG_DIR, compose_config, toy_config
from hydra.errors import ConfigCompositionException, MissingConfigException
from record_schema import check_record

from experiments.runner import loop, optim, records, train
from experiments.runner.diagnostics import TRACE_COLUMNS
from experiments.runner.train import main as train_main

REPO = Path(__file__).resolve().parents[3]
# The paper's experiments that this runner trains (criteo_dlrm and iwslt14 have their own tests).
EXPERIMENTS = [
    "mnist_mlp", "fashion_mnist_mlp", "cifar10_resnet20", "cifar10_vgg16", "cifar10_vit",
    "cifar100_resnet110", "imagenet32_resnet18", "synthetic_ls",
]  # fmt: skip
OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONFIG_DIR / "schedule").glob("*.yaml"))


class Preempted(BaseException):
    """Stands for SIGKILL: not an Exception, so the runner records nothing."""


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def _metrics(record: Path) -> list[dict]:
    return [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]


def _record(cfg) -> Path:
    return records.run_paths(cfg).record


def test_train_writes_a_complete_record(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, "optimizer=momo", "seed=3")
    info = train.train(cfg)
    record = _record(cfg)

    assert check_record(record) == info
    assert info["status"] == "completed" and info["epochs_done"] == 2 and info["error"] is None
    assert (info["experiment"], info["optimizer"], info["lr"], info["seed"]) == (
        "toy",
        "momo",
        1.0,
        3,
    )
    assert info["run_id"] == record.name == records.run_id(cfg)
    assert info["data"]["synthetic"] is False and info["profile"] == "default"
    rows = _metrics(record)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[-1] == info["final"]
    assert {"optim/step_size_median", "optim/cap_fraction", "grad_norm"} <= set(rows[-1])
    assert (record / "trace.csv").read_text().splitlines()[0] == ",".join(TRACE_COLUMNS)
    assert not (record.parent / ".partial").exists()  # the checkpoint goes once the run is done


def test_train_rerun_of_a_finished_record_returns_it_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = toy_config(tmp_path, "optimizer=sgd_m")
    first = train.train(cfg)
    monkeypatch.setattr(train, "build_run", lambda *a: pytest.fail("trained again"))
    assert train.train(cfg) == first


def test_train_resumes_a_killed_run_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # momo_star: the resume must restore the running averages and the lb estimate, and the toy task's
    # dropout and shuffling must continue from the same RNG states.
    overrides = ("optimizer=momo_star", "optimizer.lb=-1", "epochs=3")
    reference = train.train(toy_config(tmp_path / "a", *overrides))

    cfg = toy_config(tmp_path / "b", *overrides)
    save = records.save_checkpoint

    def save_then_die(paths, state):
        save(paths, state)
        if state["state"]["epoch"] == 1:
            raise Preempted

    monkeypatch.setattr(records, "save_checkpoint", save_then_die)
    with pytest.raises(Preempted):
        train.train(cfg)
    assert not _record(cfg).exists() and records.run_paths(cfg).checkpoint.exists()

    monkeypatch.setattr(records, "save_checkpoint", save)
    resumed = train.train(cfg)
    assert resumed["status"] == "completed"
    assert _without_time(_metrics(_record(cfg))) == _without_time(
        _metrics(_record(toy_config(tmp_path / "a", *overrides)))
    )
    assert (_record(cfg) / "trace.csv").read_text() == (
        _record(toy_config(tmp_path / "a", *overrides)) / "trace.csv"
    ).read_text()
    assert resumed["final"]["val/loss"] == reference["final"]["val/loss"]


def test_train_records_a_failure_keeps_the_checkpoint_and_a_rerun_replaces_it(
    tmp_path: Path,
) -> None:
    reference = train.train(toy_config(tmp_path / "a", "optimizer=sgd_m"))
    # 8 steps per epoch: step 10 fails in epoch 2. The resumed task counts its steps from 1 again
    # and so completes epoch 2.
    cfg = toy_config(tmp_path / "b", "optimizer=sgd_m", fail_at_step=10)
    failed = train.train(cfg)  # does not raise: a multirun goes on
    assert failed["status"] == "failed" and failed["epochs_done"] == 1
    assert "RuntimeError: injected failure" in failed["error"]
    assert check_record(_record(cfg)) == failed
    assert records.run_paths(cfg).checkpoint.exists()

    rerun = train.train(cfg)
    assert rerun["status"] == "completed" and rerun["error"] is None
    assert json.loads((_record(cfg) / "run.json").read_text())["status"] == "completed"
    assert _without_time([rerun["final"]]) == _without_time([reference["final"]])


def test_train_records_a_diverged_run_and_skips_it_on_rerun(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, "optimizer=sgd_m", "epochs=4", nan_at_step=5)
    info = train.train(cfg)
    assert info["status"] == "diverged" and info["epochs_done"] == 1
    assert info["final"]["train/loss"] is None or math.isnan(info["final"]["train/loss"])
    assert check_record(_record(cfg))["final"]["train/loss"] is None
    assert not (_record(cfg).parent / ".partial").exists()
    assert train.train(cfg)["status"] == "diverged"


@pytest.mark.parametrize(
    ("override", "message"),
    [("optimizer.lr=-1", "Invalid"), ("epochs=0", "Invalid epochs"), ("amp=fp8", "Invalid amp")],
)
def test_train_invalid_hyperparameters_raise_and_leave_no_record(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train.train(toy_config(tmp_path, "optimizer=sgd_m", override))
    assert not any(tmp_path.rglob("*"))


@pytest.mark.parametrize("override", ["experiment=no_such", "optimizer=no_such"])
def test_compose_unknown_names_fail_with_the_available_options(override: str) -> None:
    with pytest.raises(MissingConfigException, match="Available options"):
        compose_config("experiment=mnist_mlp", override)


def test_compose_without_an_experiment_asks_for_one() -> None:
    with pytest.raises(ConfigCompositionException, match="You must specify 'experiment'"):
        compose_config()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_composes_with_its_own_task(experiment: str) -> None:
    cfg = compose_config(f"experiment={experiment}")
    assert cfg.experiment == experiment
    assert cfg.epochs >= 1 and cfg.optimizer.name and cfg.schedule.name
    assert hydra.utils.get_class(cfg.task._target_)  # the task class imports


def test_every_optimizer_config_builds_and_steps_with_a_closure() -> None:
    for name in OPTIMIZERS:
        cfg = compose_config("experiment=mnist_mlp", f"optimizer={name}", "optimizer.lr=0.01")
        assert cfg.optimizer.name == name
        model = torch.nn.Linear(4, 1)
        opt = optim.build_optimizer(cfg.optimizer, model.parameters())
        before = model.weight.detach().clone()

        def closure(opt=opt, model=model):
            opt.zero_grad()
            loss = model(torch.ones(2, 4)).pow(2).mean() + 1.0
            loss.backward()
            return loss

        for _ in range(2):
            assert torch.is_tensor(opt.step(closure))
        assert not torch.equal(before, model.weight), name
        if name.startswith(("momo", "prox_sps")):
            assert "step_size" in opt.param_groups[0] and "adaptive_step" in opt.param_groups[0]


def test_every_schedule_config_builds() -> None:
    for name in SCHEDULES:
        cfg = compose_config("experiment=mnist_mlp", f"schedule={name}")
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = optim.build_schedule(cfg.schedule, opt, epochs=cfg.epochs, steps_per_epoch=10)
        assert cfg.schedule.interval in ("epoch", "step")
        opt.step()
        sched.step()
        assert 0 < opt.param_groups[0]["lr"] <= 1.0, name


def test_sgd_m_config_is_the_papers_ema_form() -> None:
    cfg = compose_config("experiment=mnist_mlp", "optimizer=sgd_m")
    assert (cfg.optimizer.momentum, cfg.optimizer.dampening) == (0.9, 0.9)
    assert compose_config("experiment=mnist_mlp", "optimizer=sgd_m", "optimizer.dampening=0")


def test_adabound_config_follows_the_papers_update() -> None:
    """pytorch-optimizer's AdaBound as configured = the reference algorithm (Luo et al., 2019)."""
    cfg = compose_config("experiment=mnist_mlp", "optimizer=adabound", "optimizer.weight_decay=0.1")
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = optim.build_optimizer(cfg.optimizer, [x])
    lr, final_lr, gamma, (b1, b2), eps, wd = 1e-3, 0.1, 1e-3, (0.9, 0.999), 1e-8, 0.1
    ref, m, v = x.detach().clone(), torch.zeros(3), torch.zeros(3)
    for k, g in enumerate([torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 0.3, -0.2])] * 3, 1):
        x.grad = g.clone()
        opt.step()
        g = g + wd * ref  # L2 weight decay, as in the reference code
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        step = lr * math.sqrt(1 - b2**k) / (1 - b1**k)
        lower, upper = final_lr * (1 - 1 / (gamma * k + 1)), final_lr * (1 + 1 / (gamma * k))
        ref = ref - (step / (v.sqrt() + eps)).clamp(lower, upper) * m
        torch.testing.assert_close(x.detach(), ref)


def _smoke_runs_write_valid_records(experiments: list[str], results_dir: Path) -> None:
    for experiment in experiments:
        cfg = compose_config(
            f"experiment={experiment}", "profile=smoke", f"results_dir={results_dir}"
        )
        info = train.train(cfg)
        assert info["status"] == "completed", (experiment, info["error"])
        assert info["profile"] == "smoke" and info["data"]["synthetic"] is True, experiment
        assert info["epochs_done"] == 2 and info["device"]["type"] == "cpu"
        record = _record(cfg)
        assert check_record(record) == info and len(_metrics(record)) == 2
        assert all(math.isfinite(v) for v in info["final"].values() if isinstance(v, float))


# The smoke runs of the small models take ~5 s together, those of the large ones ~60 s on 2 cores
# (mostly the evaluation of the synthetic sets in one 1024-image batch); one process runs both.
SMOKE_LARGE = ["cifar10_vgg16", "cifar10_vit", "cifar100_resnet110", "imagenet32_resnet18"]


def test_smoke_run_of_each_small_experiment_writes_a_valid_record(tmp_path: Path) -> None:
    _smoke_runs_write_valid_records([e for e in EXPERIMENTS if e not in SMOKE_LARGE], tmp_path)


@pytest.mark.slow
def test_smoke_run_of_each_large_experiment_writes_a_valid_record(tmp_path: Path) -> None:
    _smoke_runs_write_valid_records(SMOKE_LARGE, tmp_path)


def test_main_exits_non_zero_when_a_single_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "fit", lambda *a, **k: 1 / 0)
    argv = ["train", "experiment=mnist_mlp", "profile=smoke", f"results_dir={tmp_path / 'r'}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    assert exit_info.value.code == 1
    (run_json,) = (tmp_path / "r").rglob("run.json")
    assert "ZeroDivisionError" in json.loads(run_json.read_text())["error"]


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_mlp_one_epoch_reaches_80_percent(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cfg = compose_config(
        "experiment=fashion_mnist_mlp", "epochs=1", "optimizer=momo", f"results_dir={tmp_path}",
        f"data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    info = train.train(cfg)
    assert info["data"]["synthetic"] is False and info["data"]["n_train"] == 60_000
    assert info["final"]["val/score"] > 0.80


def test_train_with_bf16_autocast_completes_and_differs_from_fp32(tmp_path: Path) -> None:
    fp32 = train.train(toy_config(tmp_path, "optimizer=sgd_m"))
    bf16 = train.train(toy_config(tmp_path, "optimizer=sgd_m", "amp=bf16"))
    assert bf16["status"] == "completed" and bf16["device"]["amp"] == "bf16"
    assert bf16["run_id"] != fp32["run_id"]  # amp changes the result, so it is part of the run id
    assert bf16["final"]["train/loss"] == pytest.approx(fp32["final"]["train/loss"], rel=0.05)
    assert bf16["final"]["train/loss"] != fp32["final"]["train/loss"]


def test_train_hands_a_config_with_a_runner_to_it(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, "optimizer=sgd_m", "+runner=_toy_workload")
    info = train.train(cfg)
    assert info == {"status": "completed", "run_id": records.run_id(cfg), "runner": "toy"}
    assert train.train(cfg) == info  # the finished record returns at once


def test_train_lets_a_runner_refuse_its_config_before_anything_is_written(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, "optimizer=momo", "+runner=_toy_workload")
    with pytest.raises(ValueError, match="no toy-workload counterpart"):
        train.train(cfg)
    assert not any(tmp_path.rglob("*"))


def test_task_artefacts_are_written_into_a_completed_record_only(
    tmp_path: Path, monkeypatch
) -> None:
    from _toy_task import ToyTask

    def write_grid(self, model, run_dir):
        assert not isinstance(model, torch.nn.parallel.DistributedDataParallel)
        (run_dir / "samples.txt").write_text("a grid")

    monkeypatch.setattr(ToyTask, "on_train_end", write_grid)
    cfg = toy_config(tmp_path, "optimizer=momo")
    assert train.train(cfg)["status"] == "completed"
    assert (_record(cfg) / "samples.txt").read_text() == "a grid"

    diverged = toy_config(tmp_path, "optimizer=sgd_m", "optimizer.lr=1e12")
    assert train.train(diverged)["status"] == "diverged"
    assert not (_record(diverged) / "samples.txt").exists()


def test_schedule_total_null_is_the_length_of_the_run() -> None:
    for interval, expected_total in (("epoch", 3), ("step", 3 * 7)):
        cfg = compose_config(
            "experiment=mnist_mlp", "schedule=cosine_warmup", f"schedule.interval={interval}",
            "schedule.warmup=1", "schedule.final_factor=0.1", "epochs=3",
        )  # fmt: skip
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = optim.build_schedule(cfg.schedule, opt, epochs=3, steps_per_epoch=7)
        lrs = []
        for _ in range(expected_total):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(0.1)  # the final factor, reached exactly at the run's end
        assert lrs[-2] > 0.1


def test_warmup_longer_than_a_smoke_run_is_shortened() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = optim.warmup_cosine(opt, warmup=5, total=2, start_factor=0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # warmed up over the first interval


def test_train_log_lines_name_their_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lines of runs that train at once (a parallel sweep) interleave: each says which run it is."""
    cfg = toy_config(tmp_path, "optimizer=sgd_m", "optimizer.lr=0.1", "seed=2", "epochs=3")
    with caplog.at_level(logging.INFO, logger="experiments"):
        train.train(cfg)
        train.train(cfg)  # the rerun's "completed already"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("experiments.runner")]
    assert len(lines) >= 5
    assert all(line.startswith("[sgd_m lr=0.1 seed=2] ") for line in lines), lines
    assert sum("epoch" in line and "/3 " in line for line in lines) == 3
