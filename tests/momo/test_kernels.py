"""The multi-tensor (and compiled) paths against the single-tensor reference, step by step, on hand-set
gradients: no data, no model."""

from __future__ import annotations

import pytest
import torch

from momo import Momo, MomoAdam

SHAPES = [(4, 3), (5,), (2, 2, 2), (1,)]


def hand_set_problem(two_groups: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in SHAPES]
    if not two_groups:
        return params, [params]
    return params, [
        {"params": params[:2]},
        {"params": params[2:], "lr": 0.05, "weight_decay": 0.3},
    ]


def run(cls, options: dict, path: dict, two_groups: bool, steps: int = 12):
    """Iterates and step-size diagnostics of `steps` steps with pseudo-random gradients and losses."""
    params, groups = hand_set_problem(two_groups)
    opt = cls(groups[0] if not two_groups else groups, **options, **path)
    g = torch.Generator().manual_seed(1)
    trace = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        loss = 0.5 + torch.rand((), generator=g, dtype=torch.float64)
        opt.step(loss=loss)
        diagnostics = [
            (grp["step_size"].clone(), grp["adaptive_step"].clone(), grp.get("lb_estimate"))
            for grp in opt.param_groups
        ]
        trace.append(([p.detach().clone() for p in params], diagnostics))
    return trace


MOMO_OPTIONS = [
    {},
    {"bias_correction": True},
    {"weight_decay": 0.1},
    {"use_fstar": True, "lb": -1.0},
    {"use_fstar": True, "bias_correction": True, "weight_decay": 0.01},
    {"lr": 100.0},
    {"beta": 0.0},
]
MOMO_ADAM_OPTIONS = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "divide": False},
    {"use_fstar": True, "lb": -1.0},
    {"use_fstar": True, "weight_decay": 0.01, "divide": False},
    {"lr": 10.0},
]
CASES = [(Momo, o) for o in MOMO_OPTIONS] + [(MomoAdam, o) for o in MOMO_ADAM_OPTIONS]


def assert_same_trace(actual, expected, rtol=1e-6):
    for (xs, diags), (xs_ref, diags_ref) in zip(actual, expected, strict=True):
        for x, x_ref in zip(xs, xs_ref):
            torch.testing.assert_close(x, x_ref, rtol=rtol, atol=1e-12)
        for (tau, t1, lb), (tau_ref, t1_ref, lb_ref) in zip(diags, diags_ref):
            torch.testing.assert_close(tau, tau_ref, rtol=rtol, atol=1e-12)
            torch.testing.assert_close(t1, t1_ref, rtol=rtol, atol=1e-12)
            if lb_ref is not None:
                torch.testing.assert_close(lb, lb_ref, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("two_groups", [False, True], ids=["one_group", "two_groups"])
@pytest.mark.parametrize(("cls", "options"), CASES, ids=[f"{c.__name__}-{o}" for c, o in CASES])
def test_foreach_matches_reference(cls, options, two_groups):
    reference = run(cls, options, {"foreach": False}, two_groups)
    fast = run(cls, options, {"foreach": True}, two_groups)
    assert_same_trace(fast, reference)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (Momo, {"weight_decay": 0.1, "use_fstar": True}),
        (MomoAdam, {"weight_decay": 0.1, "divide": False}),
    ],
    ids=["Momo", "MomoAdam"],
)
def test_compiled_matches_reference(cls, options):
    reference = run(cls, options, {"foreach": False}, two_groups=True, steps=4)
    fused = run(cls, options, {"compiled": True}, two_groups=True, steps=4)
    assert_same_trace(fused, reference)


@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_foreach_matches_reference_in_float32(cls):
    def run32(foreach):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
        opt = cls(params, lr=0.5, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step(loss=1.0)
        return params

    for a, b in zip(run32(True), run32(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
