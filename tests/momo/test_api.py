"""The optimizer's contract: arguments, errors, param groups, diagnostics and non-finite losses."""

from __future__ import annotations

import math
import re

import pytest
import torch
from momo_problems import mlp, regression_data

from momo import Momo, MomoAdam

BOTH = [Momo, MomoAdam]


def one_backward(model, X, Y):
    loss = (model(X) - Y).square().mean()
    loss.backward()
    return loss


@pytest.mark.parametrize("cls", BOTH)
def test_step_without_loss_explains_both_ways(cls):
    opt = cls(mlp().parameters())
    with pytest.raises(ValueError, match="needs the loss") as error:
        opt.step()
    message = str(error.value)
    assert "optimizer.step(loss=loss)" in message
    assert "optimizer.step(closure)" in message


@pytest.mark.parametrize("cls", BOTH)
def test_step_with_both_closure_and_loss_raises(cls):
    opt = cls(mlp().parameters())
    with pytest.raises(ValueError, match="both closure and loss"):
        opt.step(lambda: 1.0, loss=1.0)


@pytest.mark.parametrize("cls", BOTH)
def test_step_closure_runs_with_grad_enabled_and_matches_loss_argument(cls):
    X, Y = regression_data()
    model_a, model_b = mlp(), mlp()
    opt_a, opt_b = cls(model_a.parameters(), lr=0.1), cls(model_b.parameters(), lr=0.1)

    def closure():
        opt_a.zero_grad()
        return one_backward(model_a, X, Y)

    with torch.no_grad():  # the closure must still be able to call backward
        returned = opt_a.step(closure)
    assert returned.requires_grad
    opt_b.zero_grad()
    loss = one_backward(model_b, X, Y)
    opt_b.step(loss=loss)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls", BOTH)
def test_step_loss_as_float_equals_loss_as_tensor(cls):
    X, Y = regression_data()
    results = []
    for as_float in (False, True):
        model = mlp()
        opt = cls(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss = one_backward(model, X, Y)
            opt.step(loss=loss.item() if as_float else loss)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("cls", BOTH)
def test_step_rejects_non_scalar_loss(cls):
    model = mlp()
    opt = cls(model.parameters())
    one_backward(model, *regression_data())
    with pytest.raises(ValueError, match="shape"):
        opt.step(loss=torch.ones(3))


@pytest.mark.parametrize(
    ("cls", "kwargs", "named"),
    [
        (Momo, {"lr": -1.0}, "lr: -1.0"),
        (Momo, {"weight_decay": -0.1}, "weight_decay: -0.1"),
        (Momo, {"beta": 1.0}, "beta: 1.0"),
        (Momo, {"beta": -0.5}, "beta: -0.5"),
        (Momo, {"lb": math.nan}, "lb: nan"),
        (MomoAdam, {"lr": -1e-3}, "lr: -0.001"),
        (MomoAdam, {"betas": (1.0, 0.999)}, "beta1 in betas: 1.0"),
        (MomoAdam, {"betas": (0.9, 1.5)}, "beta2 in betas: 1.5"),
        (MomoAdam, {"betas": (0.9,)}, "betas: (0.9,)"),
        (MomoAdam, {"eps": -1e-8}, "eps: -1e-08"),
        (MomoAdam, {"weight_decay": -1.0}, "weight_decay: -1.0"),
    ],
)
def test_invalid_hyperparameter_raises_value_error_naming_it(cls, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(f"Invalid {named}")):
        cls(mlp().parameters(), **kwargs)


def test_param_groups_must_share_beta():
    model = mlp()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    with pytest.raises(ValueError, match=r"Invalid beta: 0\.5"):
        Momo([{"params": first}, {"params": second, "beta": 0.5}])
    with pytest.raises(ValueError, match="Invalid betas"):
        MomoAdam([{"params": first}, {"params": second, "betas": (0.5, 0.999)}])


@pytest.mark.parametrize("cls", BOTH)
def test_parameters_without_grad_are_skipped(cls):
    X, Y = regression_data()
    model = mlp()
    frozen = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = cls([*model.parameters(), frozen], lr=0.1)
    opt.step(loss=one_backward(model, X, Y))
    assert torch.equal(frozen, torch.ones(4, dtype=torch.float64))
    assert frozen not in opt.state


@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize("use_fstar", [False, True])
def test_diagnostics_are_zero_dim_tensors_in_every_group(cls, use_fstar):
    X, Y = regression_data()
    model = mlp()
    params = list(model.parameters())
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}], use_fstar=use_fstar)
    opt.step(loss=one_backward(model, X, Y))
    for group in opt.param_groups:
        for key in ("step_size", "adaptive_step", *(("lb_estimate",) if use_fstar else ())):
            assert isinstance(group[key], torch.Tensor) and group[key].dim() == 0, key
        assert 0 <= group["step_size"] <= group["lr"] / (1 - 0.9 if cls is MomoAdam else 1)
    assert ("lb_estimate" in opt.param_groups[0]) == use_fstar


def test_tau_is_per_group_with_its_own_lr():
    X, Y = regression_data()
    model = mlp()
    params = list(model.parameters())
    opt = Momo([{"params": params[:2], "lr": 1e-4}, {"params": params[2:], "lr": 1e4}])
    opt.step(loss=one_backward(model, X, Y))
    small, large = opt.param_groups
    assert small["step_size"] == 1e-4  # capped
    assert large["step_size"] == large["adaptive_step"] < 1e4  # the adaptive step
    assert small["adaptive_step"] == large["adaptive_step"]  # same global model, same weight decay


@pytest.mark.parametrize("cls", BOTH)
def test_zero_gradient_gives_zero_step_not_nan(cls):
    p = torch.nn.Parameter(torch.ones(3))
    opt = cls([p], lr=1.0)
    p.grad = torch.zeros(3)
    opt.step(loss=1.0)
    assert opt.param_groups[0]["adaptive_step"] == 0
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("bad_grad", [False, True], ids=["finite_grad", "nonfinite_grad"])
def test_non_finite_loss_skips_the_step(cls, bad, bad_grad):
    """A bad batch leaves parameters and state untouched; training then continues as if it never came."""
    X, Y = regression_data()

    def trajectory(with_bad_batch: bool):
        model = mlp()
        opt = cls(model.parameters(), lr=0.1, use_fstar=True)
        for k in range(4):
            opt.zero_grad()
            loss = one_backward(model, X, Y)
            if with_bad_batch and k == 2:
                snapshot = [p.detach().clone() for p in model.parameters()]
                if bad_grad:
                    for p in model.parameters():
                        p.grad.fill_(bad)
                opt.step(loss=torch.tensor(bad, dtype=torch.float64))
                for p, before in zip(model.parameters(), snapshot):
                    assert torch.equal(p.detach(), before)
                assert opt.param_groups[0]["step_size"] == 0
                opt.zero_grad()
                loss = one_backward(model, X, Y)
            opt.step(loss=loss)
        return [p.detach() for p in model.parameters()], opt

    clean, clean_opt = trajectory(False)
    skipped, skipped_opt = trajectory(True)
    for a, b in zip(clean, skipped):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(clean_opt.state["momo"]["step"], skipped_opt.state["momo"]["step"])
