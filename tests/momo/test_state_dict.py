"""Checkpoint resume is bit-exact: 2k uninterrupted steps equal k steps, save, load into a fresh optimizer
and model, k more steps."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from momo_problems import mlp, regression_data, train

from momo import Momo, MomoAdam

CASES = [
    (Momo, {}),
    (Momo, {"bias_correction": True, "weight_decay": 0.01}),
    (Momo, {"use_fstar": True}),
    (MomoAdam, {}),
    (MomoAdam, {"use_fstar": True, "divide": False, "weight_decay": 0.01}),
]


def two_group_optimizer(cls, model, options):
    params = list(model.parameters())
    return cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.2, **options)


@pytest.mark.parametrize(("cls", "options"), CASES, ids=[f"{c.__name__}-{o}" for c, o in CASES])
def test_state_dict_resume_is_bit_exact(cls, options):
    X, Y = regression_data()
    k = 7

    model = mlp()
    opt = two_group_optimizer(cls, model, options)
    train(model, opt, 2 * k, X, Y)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model = mlp()
    opt = two_group_optimizer(cls, model, options)
    train(model, opt, k, X, Y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model = mlp(seed=123)  # a different init, overwritten by the checkpoint
    model.load_state_dict(checkpoint["model"])
    opt = two_group_optimizer(cls, model, {})  # hyperparameters come back from the state dict too
    opt.load_state_dict(checkpoint["optimizer"])
    assert opt.param_groups[0]["bias_correction" if cls is Momo else "divide"] == options.get(
        "bias_correction" if cls is Momo else "divide", cls is MomoAdam
    )
    train(model, opt, k, X, Y, start=k)
    for resumed, expected in zip(model.parameters(), uninterrupted):
        assert torch.equal(resumed.detach(), expected)


def test_state_dict_holds_the_running_averages():
    X, Y = regression_data()
    model = mlp()
    opt = Momo(model.parameters(), use_fstar=True)
    train(model, opt, 3, X, Y)
    state = opt.state_dict()["state"]["momo"]
    assert state["step"].item() == 3
    assert {"loss_avg", "gamma", "lb_estimate.0"} <= set(state)


@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
@pytest.mark.parametrize(("cls", "options"), CASES, ids=[f"{c.__name__}-{o}" for c, o in CASES])
def test_copied_optimizer_steps_like_the_original(cls, options, copy_with):
    """torch.optim.Optimizer pickles only defaults, state and param_groups; the copy must step too."""
    X, Y = regression_data()
    model = mlp()
    opt = two_group_optimizer(cls, model, options)
    train(model, opt, 3, X, Y)
    if copy_with == "deepcopy":
        model_copy, opt_copy = copy.deepcopy((model, opt))
    else:
        model_copy, opt_copy = pickle.loads(pickle.dumps((model, opt)))
    assert opt_copy.sync_loss is True and opt_copy.process_group is None
    train(model, opt, 3, X, Y, start=3)
    train(model_copy, opt_copy, 3, X, Y, start=3)
    for a, b in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(a, b)
