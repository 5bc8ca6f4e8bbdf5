"""Every optimizer config composes with every experiment: configs, instantiation and one training step.

An experiment states settings per optimizer family (the loss's lower bound, which only the MoMo family
reads), so no pair may fail with an argument its optimizer does not take. One process, the smoke profile.
Each pair is built by the runner's own `build_run` (task, model, optimizer, schedule) and takes its first
step. Every run of an experiment starts from the same model (the task's model_seed) and the same first
batch (seed 0), so the first step's loss and gradients are computed once per experiment and handed to each
optimizer by its closure: that is the first step each pair would take, without a forward and backward
pass per pair.
"""

from __future__ import annotations

import math

import pytest
import torch
from _toy_task import CONFIG_DIR, compose_config

from experiments.runner import peers, sweep, train
from experiments.runner.distributed import DistContext
from experiments.tasks import criteo_dlrm

OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Composition only: a workload with its own trainer (fairseq; docs/design.md §5), and diffusion, whose
# smoke profile keeps the recipe's 113M-parameter UNet (fashion_mnist_diffusion steps the same task class
# with every optimizer).
COMPOSE_ONLY = {"iwslt14", "diffusion"}
SMALL = {"mnist_mlp", "fashion_mnist_mlp", "synthetic_ls", "cifar10_resnet20", "criteo_dlrm"}
MOMO_FAMILY = {"momo", "momo_star", "momo_adam", "momo_adam_star", "prox_sps"}


def _config(experiment: str, optimizer: str):
    return compose_config(f"experiment={experiment}", f"optimizer={optimizer}", "profile=smoke",
                          "optimizer.lr=1e-3")  # fmt: skip


def _first_step(experiment: str) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """The initial parameters, and the loss and gradients of the first batch, as the loop computes them."""
    run = train.build_run(_config(experiment, "sgd_m"), DistContext())
    initial = [p.detach().clone() for p in run.model.parameters()]
    batch = next(iter(run.task.train_batches(run.generator)))
    run.model.train()
    with run.autocast():
        loss = run.task.loss(run.ddp_model, batch)
    loss.backward()
    grads = [
        torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in run.model.parameters()
    ]
    return initial, loss.detach(), grads


def _one_step_with_each_optimizer(experiment: str) -> None:
    if experiment == "criteo_dlrm" and criteo_dlrm._TORCHREC_IMPORT_ERROR is not None:
        pytest.skip("criteo_dlrm needs torchrec: bash scripts/install_torchrec.sh")
    initial, loss, grads = _first_step(experiment)
    for name in OPTIMIZERS:
        cfg = _config(experiment, name)
        assert cfg.optimizer.name == name
        run = train.build_run(cfg, DistContext())
        params = list(run.model.parameters())
        assert all(torch.equal(p, q) for p, q in zip(params, initial)), (experiment, name)

        def closure(params=params, optimizer=run.optimizer):
            optimizer.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g.clone()
            return loss

        peers.train_mode(run.optimizer, run.model)  # as the loop does (Schedule-Free needs it)
        lr = run.optimizer.param_groups[0]["lr"]  # 0 at the start of a warmup from 0 (diffusion)
        if name == "dadapt_sgd" and lr == 0:
            # dadaptation 3.2's DAdaptSGD takes ||g_0|| on its first step only where lr > 0, then
            # divides by it: it cannot start a warmup from lr 0 (docs/experiments.md, the peers)
            with pytest.raises(ZeroDivisionError):
                run.optimizer.step(closure)
            continue
        assert math.isfinite(float(run.optimizer.step(closure))), (experiment, name)
        # it keeps what its next step needs: state, or tensors in its param group (DoG's x_0)
        assert peers.state_bytes(run.optimizer) > 0, (experiment, name)
        step = peers.effective_step(run.optimizer)
        if step is None:
            moved = any(not torch.equal(p, q) for p, q in zip(params, initial))
            assert moved == (lr > 0), (experiment, name, lr)
        else:  # a learning-rate-free peer: its first step starts from d0 = 1e-6, below float32's ulp
            # DoWG has no lr at all (its step ignores the schedule); every other peer's scales with it
            moves = lr > 0 or name == "dowg"
            assert math.isfinite(float(step)) and (float(step) > 0) == moves, (experiment, name)
        if name in MOMO_FAMILY:
            assert float(run.optimizer.param_groups[0]["step_size"]) >= 0, (experiment, name)


@pytest.mark.parametrize("experiment", sorted(SMALL))
def test_every_optimizer_steps_with_each_small_experiment(experiment: str) -> None:
    _one_step_with_each_optimizer(experiment)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - SMALL - COMPOSE_ONLY))
def test_every_optimizer_steps_with_each_large_experiment(experiment: str) -> None:
    _one_step_with_each_optimizer(experiment)


@pytest.mark.parametrize("experiment", sorted(COMPOSE_ONLY))
def test_every_optimizer_composes_with_each_remaining_experiment(experiment: str) -> None:
    for name in OPTIMIZERS:
        cfg = compose_config(f"experiment={experiment}", f"optimizer={name}", "profile=smoke")
        assert cfg.optimizer.name == name and cfg.optimizer.lr > 0


def test_the_lower_bound_goes_to_the_momo_family_only() -> None:
    for name in OPTIMIZERS:
        wrong = compose_config("experiment=synthetic_ls", f"optimizer={name}").optimizer
        right = compose_config("experiment=mnist_mlp", f"optimizer={name}").optimizer
        if name in MOMO_FAMILY:
            assert (wrong.lb, right.lb) == (-10, 0), name
        else:
            assert "lb" not in wrong and "lb" not in right, name
    explicit = compose_config("experiment=synthetic_ls", "optimizer=momo", "optimizer.lb=-3")
    assert explicit.optimizer.lb == -3


def test_synthetic_ls_sweep_has_the_authors_methods_and_grids() -> None:
    blocks = {b.optimizer: b.params for b in sweep.load_sweep("synthetic_ls")}
    decades = {
        name: [round(math.log10(lr)) for lr in params["optimizer.lr"]]
        for name, params in blocks.items()
    }
    assert decades == {
        "momo": list(range(-3, 4)),
        "momo_star": list(range(-3, 4)),
        "sgd_m": list(range(-3, 3)),
        "momo_adam": list(range(-4, 4)),
        "momo_adam_star": list(range(-4, 4)),
        "adam": list(range(-4, 3)),
    }
    assert all(params["seed"] == [0, 1, 2] for params in blocks.values())
