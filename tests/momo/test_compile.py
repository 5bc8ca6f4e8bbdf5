"""No host synchronisation in a step: it traces whole under torch.compile and reads nothing back."""

from __future__ import annotations

import pytest
import torch
from momo_problems import mlp, regression_data
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from momo import Momo, MomoAdam

SHAPES = [(4, 3), (5,), (2, 2, 2)]

# The aten ops behind .item(), float(), bool(), `if tensor` and .tolist(): a read back to the host.
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default}


class RecordHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


OPTIONS = [
    (Momo, {"use_fstar": True, "weight_decay": 0.1, "bias_correction": True}),
    (MomoAdam, {"use_fstar": True, "weight_decay": 0.1}),
    (MomoAdam, {"divide": False, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])
@pytest.mark.parametrize(("cls", "options"), OPTIONS, ids=["Momo", "MomoAdam", "MomoAdamW"])
def test_step_reads_nothing_back_to_the_host(cls, options, foreach):
    X, Y = regression_data()
    model = mlp()
    params = list(model.parameters())
    opt = cls(
        [{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}], foreach=foreach, **options
    )
    for _ in range(3):  # the first step creates the state, later ones take the steady path
        opt.zero_grad()
        loss = (model(X) - Y).square().mean()
        loss.backward()
        with RecordHostReads() as recorder:
            opt.step(loss=loss)
        assert recorder.reads == []


def test_recorder_sees_a_host_read():
    with RecordHostReads() as recorder:
        float(torch.ones(()) * 2)
    assert recorder.reads == [torch.ops.aten._local_scalar_dense.default]


@pytest.mark.parametrize(("cls", "options"), OPTIONS[:2], ids=["Momo", "MomoAdam"])
def test_step_compiles_as_one_graph_and_matches_eager(cls, options):
    torch._dynamo.reset()
    X, Y = regression_data()
    models = [mlp(), mlp()]
    opts = [cls(m.parameters(), lr=0.5, **options) for m in models]

    @torch.compile(fullgraph=True)  # a graph break raises
    def compiled_step(loss):
        opts[1].step(loss=loss)

    for _ in range(4):
        for model, opt, step in zip(
            models, opts, (lambda loss: opts[0].step(loss=loss), compiled_step)
        ):
            opt.zero_grad()
            loss = (model(X) - Y).square().mean()
            loss.backward()
            step(loss.detach())
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (Momo, {"weight_decay": 1e-2, "bias_correction": True}),
        (MomoAdam, {"weight_decay": 1e-2, "divide": False}),
    ],
    ids=["Momo", "MomoAdam"],
)
def test_compiled_follows_an_lr_that_changes_every_step_without_recompiling(cls, options):
    """The decay factor and the cap depend on lr: fed as constants, a new lr meant a new graph (or, from
    inductor's FX graph cache, an old graph with the old constant and silently wrong parameters). A new
    weight decay must not recompile either."""
    torch._dynamo.reset()
    counters.clear()

    def run(compiled: bool) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in SHAPES
        ]
        opt = cls(params, lr=1.0, compiled=compiled, **options)
        schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        for k in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if k == 4:
                opt.param_groups[0]["weight_decay"] = 0.3
            opt.step(loss=1 + torch.rand((), generator=g, dtype=torch.float64))
            schedule.step()
        return params

    for a, b in zip(run(compiled=True), run(compiled=False)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_compiled_compiles_once_per_set_of_params_with_gradients():
    """The graph takes the list of params with gradients: a new set compiles a graph (dynamo guards on
    the list), a set seen before reuses its graph."""
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    opt = Momo(params, lr=0.1, compiled=True)
    for k in range(6):
        for i, p in enumerate(params):
            p.grad = None if (i == 0 and k % 2) else torch.randn(p.shape, generator=g)
        opt.step(loss=1.0)
    assert counters["stats"]["unique_graphs"] == 2
