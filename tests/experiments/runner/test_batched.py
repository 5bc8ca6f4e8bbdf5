"""Batched members (experiments/runner/batched.py) against sequential runs of the same optimizers.

Equivalence is checked twice. In float64 every member of a group of Momo, MomoAdam, MoMo*, SGD-M and Adam
matches its sequential run to rounding after 20 steps, for the MLP, ResNet20 (BatchNorm) and the CIFAR ViT
(dropout): the engine computes the same function. In float32 (rtol 1e-4) the MLP and the ViT match too;
ResNet20 does not, and cannot: vmap's grouped convolutions round differently from the sequential ones
(~1e-7 relative), and within 20 steps a ReLU input that lands within rounding of zero, or an Adam-type
update of a gradient entry near eps, turns that into differences of 1e-4 to 1e-3 (measured; in float64
the same comparison agrees to ~1e-14: float32 rounding, amplified by the training problem).

Isolation is exact at a fixed chunk width: a member's trajectory is bit for bit the same whatever the rest
of its group (who else, in which row, who diverged). Across widths it is not: oneDNN and MKL choose their
kernels by shape, and ResNet20's first convolution rounds differently in a vmap of 3 than of 4 (measured).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.models import mlp, resnet20, vit_cifar
from experiments.runner.batched import BatchedGroup
from momo import Momo, MomoAdam

SEED = 3

OPTIMIZERS = {
    "momo": functools.partial(Momo, lr=1.0),
    "momo_star": functools.partial(Momo, lr=1.0, use_fstar=True),
    "momo_adam": functools.partial(MomoAdam, lr=1e-3),
    "sgd_m": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.9),
    "adam": functools.partial(torch.optim.Adam, lr=1e-3),
}


def small_vit() -> nn.Module:
    """The CIFAR ViT of the paper (timm, dropout 0.1 in attention, projections and embedding), narrowed
    to width 32 and depth 2, on 16x16 inputs (16 patches), so that 20 steps of a group take seconds."""
    return vit_cifar(img_size=16, dim=32, depth=2, heads=4, mlp_dim=32)


# builder, input shape (C, H, W), batch size. ResNet20 runs on 8x8 inputs (its global pooling takes
# any size) to keep the test fast; a slow test runs it on 32x32 CIFAR-sized inputs.
MODELS = {
    "mlp": (mlp, (1, 28, 28), 32),
    "resnet20": (resnet20, (3, 8, 8), 4),
    "vit": (small_vit, (3, 16, 16), 4),
}


def make_model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    builder = MODELS[name][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234567)
        return builder().to(dtype)


def make_batches(name: str, steps: int, dtype: torch.dtype = torch.float32) -> list[tuple]:
    _, shape, batch_size = MODELS[name]
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch_size, *shape, generator=g).to(dtype),
            torch.randint(0, 10, (batch_size,), generator=g),
        )
        for _ in range(steps)
    ]


def cross_entropy(model, batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def train_sequential(model: nn.Module, factory, batches, seed: int = SEED):
    """One run as experiments.train steps it: global seed for dropout, `step(closure)` per batch."""
    net = copy.deepcopy(model).train()
    optimizer = factory(list(net.parameters()))
    torch.manual_seed(seed)
    for batch in batches:

        def closure(batch=batch) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = cross_entropy(net, batch)
            loss.backward()
            return loss

        optimizer.step(closure)
    return net, optimizer


def train_batched(
    model: nn.Module, factories, batches, seed: int = SEED, width: int | None = None
) -> BatchedGroup:
    group = BatchedGroup(model, list(factories), cross_entropy, width=width)
    torch.manual_seed(seed)
    for batch in batches:
        group.step(batch)
    return group


def assert_member_equals(group: BatchedGroup, index: int, net: nn.Module, **tolerance) -> None:
    """Member `index` has `net`'s parameters and buffers (BatchNorm statistics included)."""
    member = group.member_state_dict(index)
    expected = net.state_dict()
    assert member.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(
            member[key], value, msg=lambda m, key=key: f"{key}: {m}", **tolerance
        )


# The ViT's group runs in chunks of 2 (3 vmaps per step): each chunk must draw the same dropout masks.
@pytest.mark.parametrize(("model_name", "width"), [("mlp", None), ("resnet20", None), ("vit", 2)])
def test_batched_group_matches_sequential_runs_in_float64(model_name: str, width) -> None:
    model = make_model(model_name, torch.float64)
    batches = make_batches(model_name, 20, torch.float64)
    group = train_batched(model, OPTIMIZERS.values(), batches, width=width)
    assert group.alive == list(range(len(OPTIMIZERS)))
    for index, factory in enumerate(OPTIMIZERS.values()):
        net, _ = train_sequential(model, factory, batches)
        assert_member_equals(group, index, net)  # float64 defaults: rtol 1e-7, atol 1e-7


@pytest.mark.parametrize("model_name", ["mlp", "vit"])
def test_batched_group_matches_sequential_runs_in_float32(model_name: str) -> None:
    """rtol 1e-4, atol 1e-5 (torch's float32 default). Adam-type steps divide the gradient by
    sqrt(v) + eps, so an entry with |g| ~ eps moves by up to lr * (rounding of g) / eps: measured on the
    MLP, 0.7x the tolerance for Adam and MomoAdam at lr 1e-3 and 7x for MomoAdam at lr 1e-2."""
    model = make_model(model_name)
    batches = make_batches(model_name, 20)
    group = train_batched(model, OPTIMIZERS.values(), batches)
    for index, factory in enumerate(OPTIMIZERS.values()):
        net, _ = train_sequential(model, factory, batches)
        assert_member_equals(group, index, net, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_batched_group_matches_sequential_runs_on_cifar_sized_inputs() -> None:
    """ResNet20 on 32x32 inputs (the convolution shapes of CIFAR), float64, 20 steps."""
    model = make_model("resnet20", torch.float64)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 32, 32, generator=g).double(), torch.randint(0, 10, (4,), generator=g))
        for _ in range(20)
    ]
    group = train_batched(model, OPTIMIZERS.values(), batches)
    for index, factory in enumerate(OPTIMIZERS.values()):
        net, _ = train_sequential(model, factory, batches)
        assert_member_equals(group, index, net)


def test_batched_forward_draws_dropout_like_a_sequential_run() -> None:
    model = make_model("vit")
    batches = make_batches("vit", 3)
    group = train_batched(model, [OPTIMIZERS["sgd_m"]] * 3, batches, width=2)  # two chunks
    after_batched = torch.get_rng_state()
    train_sequential(model, OPTIMIZERS["sgd_m"], batches)
    assert torch.equal(after_batched, torch.get_rng_state())
    torch.manual_seed(SEED)
    assert not torch.equal(after_batched, torch.get_rng_state())  # the dropout did draw
    assert group.alive == [0, 1, 2]


class PoisonedSGD(torch.optim.SGD):
    """SGD that writes NaN into its parameters at its first step: the next loss is NaN, in any dtype."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.fill_(float("nan"))
        return loss


def equal_members(a: BatchedGroup, i: int, b: BatchedGroup, j: int) -> bool:
    """Bit-for-bit equality of two members: parameters, buffers and optimizer state."""
    sa, sb = a.member_state_dict(i), b.member_state_dict(j)
    if not all(same_bits(sa[k], sb[k]) for k in sa):
        return False
    oa, ob = a.members[i].optimizer.state_dict(), b.members[j].optimizer.state_dict()
    return _equal_nested(oa["state"], ob["state"])


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal bit patterns (NaN included, which torch.equal calls unequal to itself)."""
    return (
        x.dtype == y.dtype
        and x.shape == y.shape
        and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
    )


def _equal_nested(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and same_bits(x, y)
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal_nested(x[k], y[k]) for k in x)
    return x == y


@pytest.mark.parametrize(("model_name", "width"), [("mlp", 2), ("resnet20", 2), ("resnet20", 3)])
def test_batched_divergence_leaves_the_other_members_bit_for_bit_unchanged(
    model_name, width
) -> None:
    model = make_model(model_name)
    batches = make_batches(model_name, 12)
    sane = [OPTIMIZERS["momo_star"], OPTIMIZERS["sgd_m"], OPTIMIZERS["adam"]]
    diverging = functools.partial(torch.optim.SGD, lr=1e12)
    with_it = BatchedGroup(model, [sane[0], diverging, *sane[1:]], cross_entropy, width=width)
    without = BatchedGroup(model, sane, cross_entropy, width=width)
    torch.manual_seed(SEED)
    results = [with_it.step(batch) for batch in batches]
    frozen = with_it.member_state_dict(1)
    torch.manual_seed(SEED)
    for batch in batches:
        without.step(batch)

    member = with_it.members[1]
    assert member.status == "diverged"
    step = member.diverged_at
    assert results[step - 1].diverged == (1,)
    assert not torch.isfinite(results[step - 1].loss[1])  # a sequential run's criterion: the loss
    assert all(torch.isfinite(r.loss[1]) for r in results[: step - 1])
    assert all(torch.isnan(r.loss[1]) for r in results[step:])  # frozen: no loss after
    assert with_it.alive == [0, 2, 3]
    assert step < len(batches)  # the others trained on after it
    for i, j in ((0, 0), (2, 1), (3, 2)):
        assert equal_members(with_it, i, without, j), f"member {i} differs"
    # frozen at the step it diverged: no optimizer step since (the state is bit for bit the one of
    # that step; its parameters are non-finite, as a sequential run's would be by then)
    state = with_it.member_state_dict(1)
    assert all(_equal_nested(state[k], frozen[k]) for k in state)


def test_batched_divergence_frees_its_compute_at_the_default_width() -> None:
    """width=None: the diverged member leaves the vmap, which narrows from 3 to 2 rows; the others go
    on as in a group without it (to rounding: a narrower vmap may pick other kernels)."""
    model = make_model("mlp")
    batches = make_batches("mlp", 6)
    sane = [OPTIMIZERS["momo"], OPTIMIZERS["adam"]]
    diverging = functools.partial(torch.optim.SGD, lr=1e12)
    with_it = train_batched(model, [sane[0], diverging, sane[1]], batches)
    without = train_batched(model, sane, batches)
    assert with_it.members[1].status == "diverged"
    assert [len(c.members) for c in with_it._chunks] == [2]
    assert with_it._chunks[0].params["1.weight"].shape[0] == 2
    for i, j in ((0, 0), (2, 1)):
        for key, value in without.member_state_dict(j).items():
            torch.testing.assert_close(with_it.member_state_dict(i)[key], value)


def test_batched_member_trajectory_does_not_depend_on_its_group() -> None:
    """Alone (a group of one, padded), first, or last of a wider group: at one width, the same bits."""
    model = make_model("resnet20")
    batches = make_batches("resnet20", 6)
    target = OPTIMIZERS["momo_adam"]
    others = [OPTIMIZERS["adam"], OPTIMIZERS["momo"], OPTIMIZERS["sgd_m"]]
    alone = train_batched(model, [target], batches, width=3)
    first = train_batched(model, [target, *others], batches, width=3)
    last = train_batched(model, [*others[:2], target], batches, width=3)
    assert equal_members(alone, 0, first, 0)
    assert equal_members(alone, 0, last, 2)


class FailingSGD(torch.optim.SGD):
    def step(self, closure=None):
        if self.state.get("calls", 0) == 2:
            raise RuntimeError("made to fail at its third step")
        self.state["calls"] = self.state.get("calls", 0) + 1
        return super().step(closure)


def test_batched_optimizer_error_fails_only_its_member() -> None:
    model = make_model("mlp")
    batches = make_batches("mlp", 6)
    sane = [OPTIMIZERS["sgd_m"], OPTIMIZERS["momo"]]
    with_it = train_batched(
        model, [sane[0], functools.partial(FailingSGD, lr=0.1), sane[1]], batches
    )
    without = train_batched(model, sane, batches)
    failed = with_it.members[1]
    assert (failed.status, failed.failed_at) == ("failed", 3)
    assert "made to fail at its third step" in failed.error
    assert equal_members(with_it, 0, without, 0)
    assert equal_members(with_it, 2, without, 1)


def test_batched_optimizer_that_reevaluates_its_closure_fails_with_a_clear_error() -> None:
    model = make_model("mlp")
    group = BatchedGroup(
        model, [functools.partial(torch.optim.LBFGS, lr=0.1), OPTIMIZERS["sgd_m"]], cross_entropy
    )
    result = group.step(make_batches("mlp", 1)[0])
    assert result.failed == (0,)
    assert "evaluated its closure twice" in group.members[0].error
    assert group.alive == [1]


def test_batched_checkpoint_round_trip_continues_exactly(tmp_path) -> None:
    """Save mid-run (with one member diverged), restore into a fresh group, continue: the same bits as
    the uninterrupted group. ResNet20 for BatchNorm statistics, MoMo* and MomoAdam for global state."""
    model = make_model("resnet20")
    batches = make_batches("resnet20", 10)
    factories = [
        OPTIMIZERS["momo_star"],
        functools.partial(PoisonedSGD, lr=0.1),
        OPTIMIZERS["momo_adam"],
        OPTIMIZERS["sgd_m"],
    ]
    uninterrupted = BatchedGroup(model, factories, cross_entropy, width=2)
    torch.manual_seed(SEED)
    for batch in batches[:5]:
        uninterrupted.step(batch)
    assert uninterrupted.members[1].status == "diverged"
    torch.save(
        {"group": uninterrupted.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "ckpt"
    )
    for batch in batches[5:]:
        uninterrupted.step(batch)

    checkpoint = torch.load(tmp_path / "ckpt", weights_only=True)
    resumed = BatchedGroup(model, factories, cross_entropy, width=2)
    resumed.load_state_dict(checkpoint["group"])
    torch.set_rng_state(checkpoint["rng"])
    assert resumed.alive == [0, 2, 3] and resumed.steps == 5
    for batch in batches[5:]:
        resumed.step(batch)
    for i in range(len(factories)):
        assert equal_members(uninterrupted, i, resumed, i), f"member {i} differs"
    assert resumed.members[1].diverged_at == uninterrupted.members[1].diverged_at


def eval_sums(model, batch) -> dict[str, torch.Tensor]:
    images, labels = batch
    logits = model(images)
    return {
        "loss": F.cross_entropy(logits, labels, reduction="sum"),
        "correct": (logits.argmax(dim=1) == labels).sum(),
        "count": torch.tensor(labels.shape[0], device=labels.device),
    }


@pytest.mark.parametrize(("model_name", "width"), [("resnet20", 2), ("vit", None)])
def test_batched_evaluate_matches_each_member_evaluated_alone(model_name: str, width) -> None:
    """Evaluation mode (BatchNorm running statistics, no dropout), per-batch sums over all batches;
    a frozen member gets None."""
    model = make_model(model_name, torch.float64)
    batches = make_batches(model_name, 3, torch.float64)
    factories = [OPTIMIZERS["momo"], functools.partial(PoisonedSGD, lr=0.1), OPTIMIZERS["adam"]]
    group = train_batched(model, factories, batches, width=width)
    assert group.alive == [0, 2]
    results = group.evaluate(iter(batches), eval_sums)
    assert results[1] is None
    for index in group.alive:
        net = group.member_module(index).eval()
        with torch.no_grad():
            expected = [eval_sums(net, batch) for batch in batches]
        for key in ("loss", "correct", "count"):
            total = sum(e[key] for e in expected).item()
            assert results[index][key] == pytest.approx(total, rel=1e-9), key
    assert group._module.training  # back in training mode


def test_batched_member_state_dict_round_trip_and_module_view() -> None:
    model = make_model("resnet20")
    group = train_batched(
        model, [OPTIMIZERS["sgd_m"], OPTIMIZERS["adam"]], make_batches("resnet20", 2)
    )
    state = group.member_state_dict(1)
    assert state.keys() == model.state_dict().keys()
    assert state["bn1.num_batches_tracked"].item() == 2
    group.load_member_state_dict(0, state)
    assert all(torch.equal(group.member_state_dict(0)[k], v) for k, v in state.items())
    # the member's optimizer steps its row of the stack: its parameters alias the stacked values
    assert torch.equal(group.members[0].params[0], state["conv1.weight"])
    module = group.member_module(1)
    assert isinstance(module, type(model))
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(KeyError, match="missing keys"):
        group.load_member_state_dict(0, {k: v for k, v in state.items() if k != "linear.bias"})


def test_batched_group_rejects_bad_input() -> None:
    model = make_model("mlp")
    with pytest.raises(ValueError, match="at least one member"):
        BatchedGroup(model, [], cross_entropy)
    with pytest.raises(ValueError, match="Invalid width: 1"):
        BatchedGroup(model, [OPTIMIZERS["sgd_m"]], cross_entropy, width=1)
    group = BatchedGroup(model, [OPTIMIZERS["sgd_m"]], cross_entropy)
    other = BatchedGroup(model, [OPTIMIZERS["sgd_m"]] * 2, cross_entropy)
    with pytest.raises(ValueError, match="Checkpoint of 2 members, group of 1"):
        group.load_state_dict(other.state_dict())
