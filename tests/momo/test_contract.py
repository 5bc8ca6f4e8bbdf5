"""torch.optim's contract, checked on every MoMo configuration.

In the spirit of PyTorch's OptimizerInfo matrix (torch/testing/_internal/common_optimizers.py and
test/test_optim.py): one table of optimizer configurations, each run with the multi-tensor (foreach) and
the single-tensor reference (forloop) kernels, crossed with generic checks that know nothing of MoMo.
Problems are hand-set gradients and losses on small float64 tensors: no data, no model.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch.optim import lr_scheduler

from momo import Momo, MomoAdam


@dataclass(frozen=True)
class Config:
    """One row of the table: an optimizer class and its constructor arguments."""

    name: str
    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def beta(self) -> float:
        return self.kwargs.get("betas", (0.9, 0.999))[0] if self.cls is MomoAdam else 0.9

    @property
    def bias_corrected(self) -> bool:
        return self.cls is MomoAdam or self.kwargs.get("bias_correction", False)

    @property
    def has_weight_decay(self) -> bool:
        return self.kwargs.get("weight_decay", 0) > 0

    def build(self, params, foreach: bool, **overrides) -> torch.optim.Optimizer:
        return self.cls(params, **{**self.kwargs, "foreach": foreach, **overrides})


CONFIGS = [
    Config("Momo", Momo, {"lr": 0.5}),
    Config(
        "Momo-wd-bias_correction", Momo, {"lr": 0.5, "weight_decay": 0.1, "bias_correction": True}
    ),
    Config("MoMo*", Momo, {"lr": 0.5, "use_fstar": True, "lb": -1.0}),
    Config("MomoAdam", MomoAdam, {"lr": 0.05}),
    Config(
        "MomoAdam-divide_False-wd", MomoAdam, {"lr": 0.05, "divide": False, "weight_decay": 0.1}
    ),
    Config("MomoAdam*", MomoAdam, {"lr": 0.05, "use_fstar": True, "lb": -1.0}),
]
IMPLS = {"foreach": True, "forloop": False}
MATRIX = [(config, foreach) for config in CONFIGS for foreach in IMPLS.values()]
MATRIX_IDS = [f"{config.name}-{impl}" for config in CONFIGS for impl in IMPLS]

each_config = pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
each_config_and_impl = pytest.mark.parametrize(("config", "foreach"), MATRIX, ids=MATRIX_IDS)

SHAPES = [(4, 3), (5,), (2, 2, 2)]


def make_params(shapes=SHAPES, dtype=torch.float64, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def clone_params(params) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


class Batches:
    """Pseudo-random gradients and losses: the same sequence for every optimizer given the same seed."""

    def __init__(self, seed: int = 1):
        self.generator = torch.Generator().manual_seed(seed)

    def set_grads(self, params) -> torch.Tensor:
        for p in params:
            if p.requires_grad:
                grad = torch.randn(p.shape, generator=self.generator, dtype=torch.float64)
                p.grad = grad.to(p.dtype)
        return 0.5 + torch.rand((), generator=self.generator, dtype=torch.float64)


def train(opt, params, steps: int, batches: Batches | None = None) -> Batches:
    batches = batches or Batches()
    for _ in range(steps):
        opt.step(loss=batches.set_grads(params))
    return batches


def assert_same(actual, expected, rtol: float = 0.0, atol: float = 0.0) -> None:
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)


def param_state(opt, params) -> list[torch.Tensor]:
    """Every state tensor of the params, in a fixed order, and the global scalars."""
    tensors = [t for p in params for _, t in sorted(opt.state[p].items())]
    return tensors + [t for _, t in sorted(opt.state["momo"].items())]


# -- state_dict, copies ---------------------------------------------------------------------------
@each_config_and_impl
def test_contract_state_dict_round_trip_through_torch_save_resumes_bit_exactly(config, foreach):
    params = make_params()
    opt = config.build(params, foreach)
    batches = train(opt, params, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    expected = copy.deepcopy(loaded)

    resumed_params = clone_params(params)
    resumed = config.build(resumed_params, foreach, lr=123.0)  # the state dict brings the lr back
    resumed.load_state_dict(loaded)
    assert resumed.param_groups[0]["lr"] == config.kwargs["lr"]
    for left, right in zip(loaded["state"].values(), expected["state"].values()):
        assert_same(left.values(), right.values())  # loading left the dict as it was
    resumed_batches = copy.deepcopy(batches)
    train(opt, params, 3, batches)
    train(resumed, resumed_params, 3, resumed_batches)
    assert_same(resumed_params, params)
    assert_same(param_state(resumed, resumed_params), param_state(opt, params))


@each_config
def test_contract_state_dict_is_the_same_for_equal_optimizers(config):
    """Equal but not identical parameters give equal state dicts (test_state_dict_deterministic)."""
    dicts = []
    for _ in range(2):
        params = make_params()
        opt = config.build(params, True)
        train(opt, params, 2)
        dicts.append(opt.state_dict())
    assert dicts[0]["param_groups"] == dicts[1]["param_groups"]
    assert dicts[0]["state"].keys() == dicts[1]["state"].keys()
    for key, state in dicts[0]["state"].items():
        assert_same(state.values(), dicts[1]["state"][key].values())


@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
@each_config_and_impl
def test_contract_copy_keeps_public_attributes_and_steps_like_the_original(
    config, foreach, copy_with
):
    params = make_params()
    opt = config.build(params, foreach)
    batches = train(opt, params, 2)
    if copy_with == "deepcopy":
        params_copy, opt_copy = copy.deepcopy((params, opt))
    else:
        params_copy, opt_copy = pickle.loads(pickle.dumps((params, opt)))
    public = {key for key in vars(opt) if not key.startswith("_")}
    assert public == {key for key in vars(opt_copy) if not key.startswith("_")}
    batches_copy = copy.deepcopy(batches)
    train(opt, params, 2, batches)
    train(opt_copy, params_copy, 2, batches_copy)
    assert_same(params_copy, params)


# -- foreach == forloop on awkward parameter lists ------------------------------------------------
def awkward_param_groups(seed: int = 0):
    """0-dim, empty and non-contiguous params, a group without gradients and a frozen tensor."""
    g = torch.Generator().manual_seed(seed)
    scalar = torch.nn.Parameter(torch.randn((), generator=g, dtype=torch.float64))
    empty = torch.nn.Parameter(torch.zeros(0, 3, dtype=torch.float64))
    transposed = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64).t())
    strided = torch.nn.Parameter(torch.randn(6, 2, generator=g, dtype=torch.float64)[::2])
    dense = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    frozen = torch.nn.Parameter(
        torch.randn(2, generator=g, dtype=torch.float64), requires_grad=False
    )
    later = torch.nn.Parameter(
        torch.randn(3, generator=g, dtype=torch.float64), requires_grad=False
    )
    assert not transposed.is_contiguous() and not strided.is_contiguous()
    params = [scalar, empty, transposed, strided, dense, frozen, later]
    groups = [
        {"params": [scalar, empty, transposed]},
        {"params": [strided, dense, frozen], "lr": 0.01},
        {"params": [later]},  # no gradients at all: a group added for later
    ]
    return params, groups


@each_config
def test_contract_foreach_matches_forloop_on_awkward_params(config):
    results = []
    for foreach in IMPLS.values():
        params, groups = awkward_param_groups()
        opt = config.build(groups, foreach)
        train(opt, params, 5)
        assert params[-2].grad is None and params[-2] not in opt.state  # frozen: never touched
        results.append((params, param_state(opt, params)))
    (fast_params, fast_state), (ref_params, ref_state) = results
    assert_same(fast_params, ref_params, rtol=1e-9, atol=1e-12)
    assert_same(fast_state, ref_state, rtol=1e-9, atol=1e-12)


# -- steps that must not move ---------------------------------------------------------------------
@each_config_and_impl
def test_contract_step_without_any_gradient_changes_nothing(config, foreach):
    params = make_params()
    before = clone_params(params)
    opt = config.build(params, foreach)
    opt.step(loss=1.0)
    assert_same(params, before)
    assert not opt.state


@each_config_and_impl
def test_contract_zero_gradients_take_no_step(config, foreach):
    """A zero direction gives t1 = 0, never 0/0; only the weight decay (if any) acts."""
    params = make_params()
    before = clone_params(params)
    opt = config.build(params, foreach)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step(loss=1.0)
    group = opt.param_groups[0]
    assert group["step_size"] == 0 and group["adaptive_step"] == 0
    lr, wd = group["lr"], group["weight_decay"]
    decay = 1 - lr * wd if not group.get("divide", True) else 1 / (1 + lr * wd)
    assert_same(params, [b * decay for b in before], rtol=1e-15)


# -- param groups, schedulers ---------------------------------------------------------------------
@each_config_and_impl
def test_contract_add_param_group_equals_a_group_without_gradients_until_then(config, foreach):
    first, second = make_params(seed=0), make_params(SHAPES[:2], seed=1)
    late = config.build(first, foreach)
    batches = train(late, first, 2)
    late.add_param_group({"params": second, "lr": 0.01})

    first_ref, second_ref = make_params(seed=0), make_params(SHAPES[:2], seed=1)
    for p in second_ref:
        p.requires_grad_(False)  # no gradients for the first two steps
    ref = config.build([{"params": first_ref}, {"params": second_ref, "lr": 0.01}], foreach)
    train(ref, first_ref, 2)
    for p in second_ref:
        p.requires_grad_(True)

    ref_batches = copy.deepcopy(batches)
    train(late, first + second, 3, batches)
    train(ref, first_ref + second_ref, 3, ref_batches)
    assert_same(first + second, first_ref + second_ref, rtol=1e-12, atol=1e-15)


SCHEDULERS: dict[str, Callable] = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=6),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(
        opt, max_lr=opt.param_groups[0]["lr"], total_steps=8, cycle_momentum=False
    ),
}


@pytest.mark.parametrize("schedule", list(SCHEDULERS))
@each_config_and_impl
def test_contract_the_cap_follows_the_scheduled_lr(config, foreach, schedule):
    """lr is only the cap: step_size = min(lr / rho_k, adaptive_step) with the lr of that step."""
    params = make_params()
    opt = config.build(params, foreach, lr=1e-3 if config.cls is Momo else 1e-4)
    scheduler = SCHEDULERS[schedule](opt)
    batches, lrs, capped = Batches(), set(), 0
    for k in range(1, 8):
        lr = opt.param_groups[0]["lr"]
        opt.step(loss=batches.set_grads(params))
        rho = 1 - config.beta**k if config.bias_corrected else 1.0
        group = opt.param_groups[0]
        expected = min(lr / rho, group["adaptive_step"].item())
        assert group["step_size"].item() == pytest.approx(expected, rel=1e-12)
        capped += expected == pytest.approx(lr / rho, rel=1e-12)
        lrs.add(lr)
        scheduler.step()
    assert len(lrs) > 2 and capped >= 5  # the schedule did change the step actually taken


# -- hooks, zero_grad, printing -------------------------------------------------------------------
@each_config
def test_contract_step_and_state_dict_hooks_run(config):
    params = make_params()
    opt = config.build(params, True)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", sorted(kwargs))))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", sorted(kwargs))))
    opt.register_state_dict_pre_hook(lambda o: calls.append("state_dict_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    Batches().set_grads(params)
    opt.step(loss=1.0)
    opt.load_state_dict(opt.state_dict())
    assert calls == [
        ("pre", ["loss"]),
        ("post", ["loss"]),
        "state_dict_pre",
        "state_dict_post",
        "load_pre",
        "load_post",
    ]


@each_config
def test_contract_zero_grad_then_step_is_a_no_op(config):
    params = make_params()
    opt = config.build(params, True)
    train(opt, params, 1)
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    before, state_before = clone_params(params), [t.clone() for t in param_state(opt, params)]
    opt.step(loss=1.0)
    assert_same(params, before)
    assert_same(param_state(opt, params), state_before)


@each_config
def test_contract_optimizer_prints_its_hyperparameters(config):
    text = repr(config.build(make_params(), True))
    assert text.startswith(config.cls.__name__) and f"lr: {config.kwargs['lr']}" in text


# -- the loss argument ----------------------------------------------------------------------------
def closure_for(params, batches):
    def closure():
        return batches.set_grads(params)

    return closure


LOSS_FORMS: dict[str, Callable[[torch.Tensor], Any]] = {
    "tensor_0d": lambda loss: loss,
    "tensor_requiring_grad": lambda loss: loss.clone().requires_grad_(True) * 1,
    "tensor_detached": lambda loss: loss.detach(),
    "tensor_shape_1": lambda loss: loss.reshape(1),
    "tensor_float32": lambda loss: loss.float(),
    "float": lambda loss: loss.item(),
    "numpy_float64": lambda loss: np.float64(loss.item()),
    "numpy_float32": lambda loss: np.float32(loss.item()),
}


@pytest.mark.parametrize("form", [*LOSS_FORMS, "closure"])
@each_config
def test_contract_every_loss_form_gives_the_same_steps(config, form):
    results = []
    for use_form in (False, True):
        params = make_params()
        opt = config.build(params, True)
        batches = Batches()
        for _ in range(3):
            if use_form and form == "closure":
                returned = opt.step(closure_for(params, batches))
                assert isinstance(returned, torch.Tensor)
                continue
            loss = batches.set_grads(params)
            opt.step(loss=LOSS_FORMS[form](loss) if use_form else loss)
        results.append(params)
    rtol = 1e-6 if form in ("tensor_float32", "numpy_float32") else 0.0
    assert_same(results[1], results[0], rtol=rtol, atol=rtol * 1e-3)


MALFORMED_LOSSES: dict[str, Any] = {
    "string": "0.5",
    "list": [0.5],
    "bool": True,
    "complex": 0.5 + 1j,
    "tensor_of_two": torch.ones(2),
    "empty_tensor": torch.ones(0),
    "bool_tensor": torch.tensor(True),
    "complex_tensor": torch.tensor(0.5 + 1j),
    "numpy_array": np.ones(2),
}


@pytest.mark.parametrize("form", list(MALFORMED_LOSSES))
@each_config
def test_contract_malformed_loss_raises_one_clear_error(config, form):
    params = make_params()
    opt = config.build(params, True)
    Batches().set_grads(params)
    before = clone_params(params)
    with pytest.raises(ValueError, match=r"Invalid loss: .*MoMo needs the batch loss as one real"):
        opt.step(loss=MALFORMED_LOSSES[form])
    with pytest.raises(ValueError, match=r"Invalid loss"):
        opt.step(lambda: MALFORMED_LOSSES[form])
    assert_same(params, before)
    assert not opt.state


@pytest.mark.parametrize("given", ["nothing", "both", "closure_returning_none"])
@each_config
def test_contract_missing_loss_explains_how_to_pass_it(config, given):
    params = make_params()
    opt = config.build(params, True)
    Batches().set_grads(params)
    kwargs = {
        "nothing": {},
        "both": {"closure": lambda: 1.0, "loss": 1.0},
        "closure_returning_none": {"closure": lambda: None},
    }[given]
    with pytest.raises(ValueError, match=re.escape("optimizer.step(loss=loss)")):
        opt.step(**kwargs)


# -- non-finite values ----------------------------------------------------------------------------
def poison(params, batches, what: str) -> torch.Tensor:
    loss = batches.set_grads(params)
    if what == "nan_loss":
        return torch.tensor(math.nan, dtype=torch.float64)
    if what == "inf_loss":
        return torch.tensor(math.inf, dtype=torch.float64)
    params[0].grad.view(-1)[1] = math.nan if what == "nan_grad" else -math.inf
    return loss


@pytest.mark.parametrize("at_step", [1, 3])
@pytest.mark.parametrize("what", ["nan_loss", "inf_loss", "nan_grad", "inf_grad"])
@each_config_and_impl
def test_contract_non_finite_batch_is_skipped(config, foreach, what, at_step):
    """The bad batch changes nothing; the run then equals one that never saw it."""
    clean_params, bad_params = make_params(), make_params()
    clean, bad = config.build(clean_params, foreach), config.build(bad_params, foreach)
    clean_batches, bad_batches = Batches(), Batches()
    for k in range(1, 6):
        if k == at_step:
            before = clone_params(bad_params)
            state = [t.clone() for t in param_state(bad, bad_params) if t is not None]
            bad.step(loss=poison(bad_params, Batches(seed=99), what))
            assert_same(bad_params, before)
            assert bad.param_groups[0]["step_size"] == 0
            if k > 1:
                assert_same(param_state(bad, bad_params), state)
        clean.step(loss=clean_batches.set_grads(clean_params))
        bad.step(loss=bad_batches.set_grads(bad_params))
    assert_same(bad_params, clean_params)
    assert_same(param_state(bad, bad_params), param_state(clean, clean_params))


# -- dtypes, complex, sparse ----------------------------------------------------------------------
DTYPE_TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-3,
}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@each_config
def test_contract_each_float_dtype_steps_and_foreach_matches_forloop(config, dtype):
    results = []
    for foreach in IMPLS.values():
        params = make_params(dtype=dtype)
        before = clone_params(params)
        opt = config.build(params, foreach)
        train(opt, params, 3)
        for p, b in zip(params, before):
            assert p.dtype == dtype and torch.isfinite(p).all() and not torch.equal(p, b)
        assert all(t.dtype == dtype for p in params for t in opt.state[p].values())
        results.append(params)
    tol = DTYPE_TOLERANCE[dtype]
    assert_same(results[0], results[1], rtol=tol, atol=tol)


@each_config_and_impl
def test_contract_complex_params_step_as_their_real_views(config, foreach):
    g = torch.Generator().manual_seed(0)
    complex_params = [
        torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.complex128)) for s in SHAPES
    ]
    real_params = [
        torch.nn.Parameter(torch.view_as_real(p).detach().clone()) for p in complex_params
    ]
    complex_opt, real_opt = (
        config.build(complex_params, foreach),
        config.build(real_params, foreach),
    )
    for _ in range(4):
        for c, r in zip(complex_params, real_params):
            c.grad = torch.randn(c.shape, generator=g, dtype=c.dtype)
            r.grad = torch.view_as_real(c.grad).clone()
        loss = 0.5 + torch.rand((), generator=g, dtype=torch.float64)
        complex_opt.step(loss=loss)
        real_opt.step(loss=loss)
    assert_same([torch.view_as_real(p) for p in complex_params], real_params)


@each_config_and_impl
def test_contract_sparse_gradient_raises_a_clear_error(config, foreach):
    params = make_params()
    opt = config.build(params, foreach)
    Batches().set_grads(params)
    params[1].grad = params[1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step(loss=1.0)


# -- behaviour ------------------------------------------------------------------------------------
@each_config_and_impl
def test_contract_goes_downhill_on_a_least_squares_problem(config, foreach):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b = A @ torch.randn(
        5, generator=g, dtype=torch.float64
    )  # consistent: the lower bound 0 is tight
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = config.build([x], foreach, lr=0.1 if config.cls is Momo else 0.05)

    def closure():
        opt.zero_grad()
        loss = (A @ x - b).square().mean()
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(30):
        opt.step(closure)
    assert closure().item() < 0.5 * first


@each_config_and_impl
def test_contract_two_runs_are_bit_identical(config, foreach):
    runs = []
    for _ in range(2):
        params = make_params()
        opt = config.build(params, foreach)
        train(opt, params, 4)
        runs.append((params, param_state(opt, params)))
    assert_same(runs[0][0], runs[1][0])
    assert_same(runs[0][1], runs[1][1])


def test_contract_invalid_params_raise_torch_optim_errors():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        Momo(p)
    with pytest.raises(ValueError, match="more than one parameter group"):
        MomoAdam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="Invalid lr: a tensor"):
        Momo([{"params": [p], "lr": torch.tensor(0.1)}])


# -- compiled -------------------------------------------------------------------------------------
@each_config
def test_contract_compiled_equals_eager_under_a_changing_lr(config):
    """compiled=True runs the fused two-pass kernel: the same steps as eager on the awkward params, one
    graph for every lr, and a skipped step on the way."""
    torch._dynamo.reset()
    counters.clear()
    runs = []
    for compiled in (False, True):
        params, groups = awkward_param_groups()
        opt = config.build(groups, True, compiled=compiled)
        scheduler = lr_scheduler.CosineAnnealingLR(opt, T_max=5)
        batches = Batches()
        for k in range(6):
            loss = batches.set_grads(params)
            if k == 2:
                params[2].grad[0, 0] = math.nan
            opt.step(loss=loss)
            scheduler.step()
        runs.append((params, param_state(opt, params), opt.param_groups[0]["step_size"]))
    (eager_params, eager_state, eager_tau), (fused_params, fused_state, fused_tau) = runs
    assert_same(fused_params, eager_params, rtol=1e-12, atol=1e-14)
    assert_same(fused_state, eager_state, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused_tau, eager_tau, rtol=1e-12, atol=0)
    assert counters["stats"]["unique_graphs"] == 1
