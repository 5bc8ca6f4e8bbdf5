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


FIRST_STEP_CASES = [
    (Momo, {}),
    (Momo, {"bias_correction": True}),
    (MomoAdam, {}),
]


def first_step_run(cls, options, foreach, bad: str | None):
    """Four steps on hand-set gradients; the first batch is bad (`bad`) or absent (None)."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w], lr=0.5, foreach=foreach, **options)
    if bad is not None:
        w.grad = torch.tensor([math.nan if bad == "nan_grad" else math.inf, 1.0, 1.0])
        opt.step(loss=math.nan if bad == "nan_loss" else 1.0)
        assert torch.equal(w.detach(), torch.ones(3))
        assert opt.param_groups[0]["step_size"] == 0
    for k in range(3):
        w.grad = torch.tensor([1.0, -2.0, 0.5]) * (k + 1)
        opt.step(loss=1.0 + k)
    return w.detach(), opt.state[w], opt.state["momo"]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_loss"])
@pytest.mark.parametrize(
    ("cls", "options"), FIRST_STEP_CASES, ids=[f"{c.__name__}-{o}" for c, o in FIRST_STEP_CASES]
)
def test_non_finite_first_step_is_skipped_like_any_other(cls, options, bad, foreach):
    """A bad first batch must not seed the averages (d_0 was a clone of the NaN gradient)."""
    clean = first_step_run(cls, options, foreach, bad=None)
    skipped = first_step_run(cls, options, foreach, bad=bad)
    torch.testing.assert_close(skipped[0], clean[0], rtol=0, atol=0)
    for key in clean[1]:
        torch.testing.assert_close(skipped[1][key], clean[1][key], rtol=0, atol=0)
    for key in clean[2]:
        torch.testing.assert_close(skipped[2][key], clean[2][key], rtol=0, atol=0)


@pytest.mark.parametrize("cls", BOTH)
def test_closure_returning_none_raises_the_missing_loss_error_naming_it(cls):
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w])

    def forgets_to_return_the_loss():
        w.grad = torch.ones(3)

    with pytest.raises(ValueError, match="needs the loss") as error:
        opt.step(forgets_to_return_the_loss)
    assert "forgets_to_return_the_loss returned None" in str(error.value)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
@pytest.mark.parametrize("cls", BOTH)
def test_published_lb_estimate_keeps_its_value_after_later_steps(cls, foreach):
    """A logger that keeps the tensors and reads them later (no sync per step) reads what was published."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w], lr=1.0, lb=-1.0, use_fstar=True, foreach=foreach)
    published = []
    for k in range(4):
        w.grad = torch.full((3,), 1.0 + k)
        opt.step(loss=1.0 + 2 * k)
        group = opt.param_groups[0]
        published.append({key: group[key] for key in ("step_size", "adaptive_step", "lb_estimate")})
        at_the_time = {key: value.item() for key, value in published[-1].items()}
        assert published[-1]["lb_estimate"].item() == opt.state["momo"]["lb_estimate.0"].item()
        published[-1]["values"] = at_the_time
    for entry in published:
        assert {key: entry[key].item() for key in entry["values"]} == entry["values"]
    assert len({entry["values"]["lb_estimate"] for entry in published}) > 1  # it did move


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
@pytest.mark.parametrize("cls", BOTH)
def test_param_group_without_gradients_is_skipped(cls, foreach):
    """A frozen head or a group added for later: none of its params has a gradient."""
    X, Y = regression_data()
    frozen = torch.nn.Linear(2, 2).double()
    before = [p.detach().clone() for p in frozen.parameters()]
    with_frozen, alone = mlp(), mlp()
    opts = [
        cls(
            [{"params": with_frozen.parameters()}, {"params": frozen.parameters()}], foreach=foreach
        ),
        cls(alone.parameters(), foreach=foreach),
    ]
    for _ in range(3):
        for model, opt in zip((with_frozen, alone), opts):
            opt.zero_grad()
            opt.step(loss=one_backward(model, X, Y))
    for p, b in zip(frozen.parameters(), before):
        assert torch.equal(p.detach(), b)
    for a, b in zip(with_frozen.parameters(), alone.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
@pytest.mark.parametrize("cls", BOTH)
def test_complex_parameter_steps_as_its_real_view(cls, foreach):
    """As torch.optim: a complex number is two real coordinates (torch.view_as_real)."""
    g = torch.Generator().manual_seed(0)
    complex_param = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex64, generator=g))
    real_param = torch.nn.Parameter(torch.view_as_real(complex_param).detach().clone())
    opts = [
        cls([p], lr=0.5, foreach=foreach, weight_decay=0.1) for p in (complex_param, real_param)
    ]
    for _ in range(4):
        complex_param.grad = torch.randn(5, 3, dtype=torch.complex64, generator=g)
        real_param.grad = torch.view_as_real(complex_param.grad).clone()
        loss = 1 + torch.rand((), generator=g)
        for opt in opts:
            opt.step(loss=loss)
        assert opts[0].param_groups[0]["step_size"] > 0
        torch.testing.assert_close(torch.view_as_real(complex_param), real_param, rtol=0, atol=0)
