"""The facts of docs/algorithm.md ("Facts a test can check"), each checked numerically (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from momo_problems import LeastSquares, mlp, regression_data, train

from momo import Momo, MomoAdam


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(a, b, rtol=1e-10, atol=1e-12):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def flat_dot(xs, ys) -> torch.Tensor:
    return sum(torch.sum(x * y) for x, y in zip(xs, ys))


# Fact 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_beta_zero_is_truncated_polyak_step(weight_decay):
    """beta=0: tau = min(alpha, (f - lb)_+ / ||g||^2), in the proximal form when weight_decay > 0."""
    problem = LeastSquares()
    x = problem.init()
    lr, lb = 0.7, 0.05
    opt = Momo([x], lr=lr, beta=0.0, lb=lb, weight_decay=weight_decay)
    for idx in problem.batches(15):
        x_k = x.detach().clone()
        opt.zero_grad()
        loss = problem.loss(x, idx)
        loss.backward()
        g = x.grad.clone()
        opt.step(loss=loss)
        c = 1 + lr * weight_decay
        # (1+αλ)(f - lb) + <g,x> - (1+αλ)<g,x> = (1+αλ)(f - lb) - αλ<g,x>
        t1 = (
            max(c * (loss.item() - lb) - lr * weight_decay * torch.dot(g, x_k).item(), 0)
            / g.square().sum()
        )
        expected = (x_k - min(lr, t1) * g) / c
        torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-14)


# Facts 2, 3 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_capped_momo_is_sgd_with_momentum(beta):
    X, Y = regression_data()
    model_momo, model_sgd = mlp(), mlp()
    momo = Momo(model_momo.parameters(), lr=0.05, beta=beta, lb=-1e6)
    sgd = torch.optim.SGD(model_sgd.parameters(), lr=0.05, momentum=beta, dampening=beta)
    train(model_momo, momo, 25, X, Y)
    train(model_sgd, sgd, 25, X, Y)
    assert momo.param_groups[0]["adaptive_step"] > 0.05  # the cap bound on every step
    assert_params_equal(params_of(model_momo), params_of(model_sgd))


@pytest.mark.parametrize(
    ("divide", "weight_decay", "reference"),
    [
        (True, 0.0, torch.optim.Adam),
        (False, 0.0, torch.optim.Adam),
        (False, 0.1, torch.optim.AdamW),
    ],
)
def test_capped_momo_adam_is_adam(divide, weight_decay, reference):
    X, Y = regression_data()
    model_momo, model_adam = mlp(), mlp()
    momo = MomoAdam(
        model_momo.parameters(), lr=1e-2, lb=-1e6, divide=divide, weight_decay=weight_decay
    )
    adam = reference(model_adam.parameters(), lr=1e-2, weight_decay=weight_decay)
    train(model_momo, momo, 25, X, Y)
    train(model_adam, adam, 25, X, Y)
    assert_params_equal(params_of(model_momo), params_of(model_adam), rtol=1e-9, atol=1e-11)


# Fact 4 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [1e-3, 10.0])
def test_first_step_is_the_same_with_and_without_bias_correction(lr):
    X, Y = regression_data()
    results = []
    for bias_correction in (False, True):
        model = mlp()
        x_1 = params_of(model)
        opt = Momo(model.parameters(), lr=lr, lb=0.0, bias_correction=bias_correction)
        loss = train(model, opt, 1, X, Y)[0]
        results.append(params_of(model))
    model = mlp()
    opt_free = torch.optim.SGD(model.parameters(), lr=0.0)  # only to compute g_1 the same way
    opt_free.zero_grad()
    (model(X[:16]) - Y[:16]).square().mean().backward()
    g_1 = [p.grad for p in model.parameters()]
    step = min(lr, loss / sum(g.square().sum() for g in g_1).item())
    expected = [x - step * g for x, g in zip(x_1, g_1)]
    assert_params_equal(results[0], expected)
    assert_params_equal(results[1], expected)


# Fact 5 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_no_step_below_the_lower_bound(cls):
    X, Y = regression_data()
    model = mlp()
    x_1 = params_of(model)
    opt = cls(model.parameters(), lr=1.0, lb=100.0)  # every loss here is far below 100
    losses = train(model, opt, 6, X, Y)
    assert max(losses) < 100
    assert opt.param_groups[0]["adaptive_step"] == 0
    assert_params_equal(params_of(model), x_1, rtol=0, atol=0)


# Fact 6 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Momo, MomoAdam])
@pytest.mark.parametrize("lb", [0.0, -0.5])
def test_uncapped_step_lands_on_the_lower_bound_of_the_model(cls, lb):
    """After an uncapped step, fbar_k + <d_k, x_{k+1}> - gamma_k = rho_k lb."""
    X, Y = regression_data()
    model = mlp()
    opt = cls(model.parameters(), lr=1e6, lb=lb)
    uncapped = 0
    for k in range(8):
        train(model, opt, 1, X, Y, start=k)
        group = opt.param_groups[0]
        if not (0 < group["adaptive_step"] < group["step_size"] * 1e6):
            continue
        uncapped += 1
        state = opt.state["momo"]
        d = [opt.state[p]["exp_avg"] for p in model.parameters()]
        rho = 1.0 if cls is Momo else 1 - 0.9 ** state["step"].item()
        model_value = state["loss_avg"] + flat_dot(d, params_of(model)) - state["gamma"]
        torch.testing.assert_close(
            model_value, torch.tensor(rho * lb, dtype=torch.float64), atol=1e-10, rtol=0
        )
    assert uncapped >= 4


# Fact 7 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "options"), [(Momo, {}), (Momo, {"bias_correction": True}), (MomoAdam, {"eps": 0.0})]
)
def test_iterates_are_invariant_to_scaling_and_shifting_the_loss(cls, options):
    X, Y = regression_data()
    scale, shift, lb = 7.0, 3.0, 0.0
    model_a, model_b = mlp(), mlp()
    opt_a = cls(model_a.parameters(), lr=1e6, lb=lb, **options)
    opt_b = cls(model_b.parameters(), lr=1e6, lb=scale * lb + shift, **options)
    train(model_a, opt_a, 10, X, Y)
    train(
        model_b, opt_b, 10, X, Y, loss_fn=lambda out, y: scale * (out - y).square().mean() + shift
    )
    assert_params_equal(params_of(model_a), params_of(model_b), rtol=1e-8, atol=1e-10)


# Fact 8 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_results_do_not_depend_on_lr_once_it_exceeds_every_adaptive_step(cls):
    X, Y = regression_data()
    finals, max_t1 = [], 0.0
    for lr in (10.0, 100.0, 1000.0):
        model = mlp()
        opt = cls(model.parameters(), lr=lr)
        for k in range(15):
            train(model, opt, 1, X, Y, start=k)
            max_t1 = max(max_t1, opt.param_groups[0]["adaptive_step"].item())
        finals.append(params_of(model))
    assert max_t1 < 10.0
    assert_params_equal(finals[0], finals[1], rtol=0, atol=0)
    assert_params_equal(finals[0], finals[2], rtol=0, atol=0)


# Fact 9 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.1, 1.0, 100.0])
def test_convergence_rate_on_consistent_least_squares(lr):
    """Under interpolation with lb = f_* = 0, min_k f(x_k) - f_* falls at least as O(1/sqrt(K))."""
    problem = LeastSquares(n=200, p=10)
    x = problem.init()
    opt = Momo([x], lr=lr, lb=0.0)
    best, history = np.inf, []
    for idx in problem.batches(400, batch_size=20):
        with torch.no_grad():
            best = min(best, problem.loss(x).item())
        history.append(best)
        opt.zero_grad()
        loss = problem.loss(x, idx)
        loss.backward()
        opt.step(loss=loss)
    ks = np.arange(1, len(history) + 1)
    window = slice(9, None)  # past the transient
    slope = np.polyfit(np.log(ks[window]), np.log(np.maximum(history, 1e-300)[window]), 1)[0]
    assert slope <= -0.5, slope


# Fact 10 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "options"), [(Momo, {}), (Momo, {"bias_correction": True}), (MomoAdam, {})]
)
def test_momo_star_lower_bound_only_falls_through_the_reset(cls, options):
    problem = LeastSquares(n=200, p=10)
    x = problem.init()
    floor = -10.0
    opt = cls([x], lr=1.0, lb=floor, use_fstar=True, **options)
    beta = 0.9
    previous, resets, rises = floor, 0, 0
    for idx in problem.batches(150, batch_size=20):
        x_k = x.detach().clone()
        opt.zero_grad()
        loss = problem.loss(x, idx)
        loss.backward()
        opt.step(loss=loss)
        state = opt.state["momo"]
        lb = opt.param_groups[0]["lb_estimate"].item()
        assert lb >= floor
        bias_corrected = cls is MomoAdam or options.get("bias_correction")
        rho = 1 - beta ** state["step"].item() if bias_corrected else 1.0
        cap = (state["loss_avg"] + torch.dot(opt.state[x]["exp_avg"], x_k) - state["gamma"]).item()
        if cap < rho * previous:
            resets += 1
        else:
            assert lb >= previous - 1e-12 * abs(previous), (lb, previous)
            rises += lb > previous
        previous = lb
    assert rises > 0 and previous > floor  # the estimate does move up from its initial value
