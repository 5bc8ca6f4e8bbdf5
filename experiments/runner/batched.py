"""Batched members: K runs of one model, one forward and one backward for all of them.

The K members of a `BatchedGroup` share the architecture, the initial weights, the seed and hence the
batches; they differ only in their optimizer and its hyperparameters. Their parameters and buffers are
stacked into tensors of shape (K, ...), and the model runs once for all members with
`torch.func.functional_call` under `torch.func.vmap`:

- BatchNorm keeps running statistics per member (updated in training mode, used in evaluation mode);
- dropout runs with `randomness="same"`: one mask per call, drawn from the global RNG as a sequential
  run of the same seed draws it (same shape, same order, same RNG state afterwards), shared by all
  members, each of which would have drawn exactly that mask on its own;
- the user's loss, written for one model (`loss_fn(model, batch)` calls `model(x)`), is vmapped into a
  (K,) vector; the gradient of its sum gives every member its own gradient.

Each member keeps its own optimizer, an instance of an unchanged class (torch.optim, momo, timm, ...),
over its own parameters: leaf tensors that share storage with the member's row of the stacked
parameters, whose `.grad` is the member's row of the stacked gradient. The optimizer's math is thus a
sequential run's, and MoMo's inner products and norms stay per member.

A member whose loss turns non-finite is marked diverged at that step and frozen: it takes no optimizer
step and leaves the stack. That is a sequential run's criterion (experiments.runner.loop): a gradient norm
that overflows float32 while the loss is finite (huge but finite gradient entries) is not divergence, and
the member steps on, as the sequential run does. Its values reach no other member either way: every
member's forward, loss and gradient are its own rows of the batched computation. A member whose
optimizer raises is frozen the same way, with its traceback. The others train on unaffected.

How far "unaffected" goes is a matter of bits. The members run in chunks of `width` rows, one vmap each;
a member's arithmetic depends on the chunk width and on nothing else: not on the other members, their
values, its row or how many have stopped (tested on CPU: tests/experiments/runner/test_batched.py). The
kernels do depend on the width (oneDNN and MKL pick them by shape: on CPU, ResNet20's first convolution on 8x8
inputs rounds differently in a vmap of 3 members than of 4, and a vmap of 1 differs from a wider one). So:

- `width=None` (default): one chunk of all members that train, narrowed as members stop, so a stopped
  member costs nothing; a narrower chunk may round differently in the last bits;
- `width=w`: chunks of exactly w rows (the last padded with copies of a member, outside the loss), so a
  member's trajectory is bit for bit the same in any group of that width, whoever stops; a chunk's
  compute is freed once all its members stopped. The chunk width also caps memory: one chunk's
  activations live at a time.

The group never reads a task or a config: a runner gives it the model, the optimizer factories and a loss,
steps it batch by batch, evaluates it with a per-batch `eval_fn`, and checkpoints it with `state_dict()`.
"""

from __future__ import annotations

import contextlib
import copy
import traceback
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = [
    "BatchedGroup",
    "EvalFn",
    "LossFn",
    "Member",
    "MemberModel",
    "OptimizerFactory",
    "StepResult",
]

LossFn = Callable[[Any, Any], Tensor]
EvalFn = Callable[[Any, Any], dict[str, Tensor]]
OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]

# A vmap of one member runs other kernels than a wider one (measured on CPU: the MLP's linear layers
# and 12 of ResNet20's convolutions differ in the last bits), so a chunk is never narrower than this.
_MIN_WIDTH = 2


@dataclass
class Member:
    """One run of the group: its optimizer over `params` (in `model.parameters()` order) and status."""

    index: int
    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    diverged_at: int | None = None  # the group step whose loss was non-finite
    failed_at: int | None = None  # the group step whose optimizer step raised
    error: str | None = None  # that exception's traceback

    @property
    def status(self) -> str:
        """The member's state: "training", "diverged" or "failed"."""
        if self.failed_at is not None:
            return "failed"
        return "training" if self.diverged_at is None else "diverged"


@dataclass(frozen=True)
class StepResult:
    """What one group step produced, indexed by member: `loss` and `grad_norm` (K,) on the device,
    NaN for members frozen before this step; the members that diverged or failed at this step."""

    loss: Tensor
    grad_norm: Tensor
    diverged: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()


class MemberModel:
    """The shared module run with one member's parameters and buffers: the `model` that `loss_fn` and
    `eval_fn` call. `training` is the group's mode."""

    def __init__(self, module: nn.Module, tensors: tuple[dict[str, Tensor], dict[str, Tensor]]):
        self._module = module
        self._tensors = tensors

    @property
    def training(self) -> bool:
        return self._module.training

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._module, self._tensors, args, kwargs, strict=True)


class _Closure:
    """The member's loss, already computed: what its optimizer's `step(closure)` evaluates."""

    def __init__(self, loss: Tensor) -> None:
        self.loss = loss
        self.calls = 0

    def __call__(self) -> Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(
                "The optimizer evaluated its closure twice in one step (as LBFGS or SAM do); a batched "
                "group computes each batch once for all members: train this optimizer sequentially"
            )
        return self.loss


@dataclass
class _Chunk:
    """`width` rows of stacked parameters, buffers and gradients: its members' rows first, then
    padding copies of its first member (outside the loss)."""

    members: list[int]
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    grads: list[Tensor]


class BatchedGroup:
    """K members that train `model` with one optimizer each, sharing every forward and backward.

    Args:
        model: the initial model; every member starts from a copy of its parameters and buffers.
        optimizers: one factory per member, called with the member's parameters (a list in
            `model.parameters()` order), e.g. `functools.partial(momo.Momo, lr=1.0)`.
        loss_fn: `loss_fn(model, batch)`, the 0-dim mean loss of a batch for one model (a task's
            `loss`). It is vmapped over the members: no host reads (`.item()`, Python branches on
            tensor values) inside.
        width: members per vmap (see the module docstring): None, all that train in one; an int,
            chunks of exactly that many rows, for bit-exact independence of the group's make-up.
        autocast: a context manager factory around the forward passes (training and evaluation),
            e.g. `functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)`; the backward and
            the optimizer steps run outside it.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[OptimizerFactory],
        loss_fn: LossFn,
        *,
        width: int | None = None,
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        if not optimizers:
            raise ValueError("A batched group needs at least one member (got no optimizer factory)")
        if width is not None and (not isinstance(width, int) or width < _MIN_WIDTH):
            raise ValueError(f"Invalid width: {width} (None or an int >= {_MIN_WIDTH})")
        self.loss_fn = loss_fn
        self.width = width
        self.autocast = autocast
        self.steps = 0  # group steps taken: step() calls
        self._module = copy.deepcopy(model)
        self._param_names = [name for name, _ in model.named_parameters()]
        self._buffer_names = [name for name, _ in model.named_buffers()]
        self._state_keys = list(model.state_dict())  # persistent buffers only, aliases included
        self._aliases = _aliases(model)
        self._trainable = [p.requires_grad for p in model.parameters()]
        self.members: list[Member] = []
        for index, factory in enumerate(optimizers):
            params = [_leaf_copy(p) for p in model.parameters()]
            self.members.append(Member(index, factory(params), params))
        # The buffers of members outside the chunks: everyone's now, a stopped member's later.
        self._own_buffers: dict[int, dict[str, Tensor]] = {
            m.index: {name: b.detach().clone() for name, b in model.named_buffers()}
            for m in self.members
        }
        self._chunks: list[_Chunk] = []
        self._where: dict[int, tuple[_Chunk, int]] = {}  # member -> (chunk, row)
        self._grad_views: dict[int, list[Tensor]] = {}  # member -> its rows of the chunk's grads
        self._restack()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def alive(self) -> list[int]:
        """Indices of the members that still train, in chunk order."""
        return [i for chunk in self._chunks for i in chunk.members]

    def train(self, mode: bool = True) -> BatchedGroup:
        """Training (BatchNorm batch statistics, dropout) or evaluation mode, as `nn.Module.train`."""
        self._module.train(mode)
        return self

    def eval(self) -> BatchedGroup:
        return self.train(False)

    def stop(self, indices: Iterable[int]) -> None:
        """Freezes members that a runner has finished with (as if they had diverged now): they take
        no further step and leave the stack."""
        stopped = [i for i in indices if self.members[i].status == "training"]
        for index in stopped:
            self.members[index].diverged_at = self.steps
        if stopped:
            self._restack()

    # -- training ----------------------------------------------------------------------------

    def step(self, batch: Any) -> StepResult:
        """One forward and backward of `batch` for every member that trains, then each member's
        `optimizer.step(closure)`; a member whose loss is non-finite is frozen instead.

        One host synchronisation (the members' finiteness) per step, whatever K is."""
        self.steps += 1
        alive = self.alive
        if not alive:
            nan = torch.full((len(self.members),), float("nan"), device=self._device)
            return StepResult(nan, nan.clone())
        # Every chunk draws what one sequential forward draws (dropout masks), from the same state.
        rng = _RngState(self._device) if len(self._chunks) > 1 else None
        losses, norms = [], []
        for c, chunk in enumerate(self._chunks):
            if rng is not None and c > 0:
                rng.restore()
            chunk_losses, chunk_norms, unused = self._forward_backward(chunk, batch)
            losses.append(chunk_losses)
            norms.append(chunk_norms)
        losses, norms = torch.cat(losses), torch.cat(norms)
        finite = torch.isfinite(losses).tolist()
        diverged, failed = [], []
        for position, index in enumerate(alive):
            if not finite[position]:
                diverged.append(index)
                continue
            self._attach_grads(index, unused)
            try:
                self.members[index].optimizer.step(_Closure(losses[position]))
            except Exception:
                failed.append(index)
                self.members[index].error = traceback.format_exc()
        rows = torch.tensor(alive, device=losses.device)
        k = len(self.members)
        loss = losses.new_full((k,), float("nan")).index_copy_(0, rows, losses)
        grad_norm = norms.new_full((k,), float("nan")).index_copy_(0, rows, norms)
        for index in diverged:
            self.members[index].diverged_at = self.steps
        for index in failed:
            self.members[index].failed_at = self.steps
        if diverged or failed:
            self._restack()
        return StepResult(loss, grad_norm, tuple(diverged), tuple(failed))

    def _forward_backward(self, chunk: _Chunk, batch: Any) -> tuple[Tensor, Tensor, set[int]]:
        """The chunk's losses, its members' gradient norms (gradients into `chunk.grads`), and the
        indices of the parameters without a gradient."""
        with self.autocast():
            losses = vmap(self._member_loss, in_dims=(0, 0, None), randomness="same")(
                chunk.params, chunk.buffers, batch
            )
        n = len(chunk.members)  # rows past n are padding: they take no part in the gradient
        params = list(chunk.params.values())
        trainable = [p for p, t in zip(params, self._trainable) if t]
        computed = iter(torch.autograd.grad(losses[:n].sum(), trainable, allow_unused=True))
        grads = [next(computed) if t else None for t in self._trainable]
        with torch.no_grad():
            # Copied into the members' .grad rows rather than handed over: vmap's weight gradients
            # come transposed, which would cost every optimizer a copy in each of its reductions.
            for buffer, grad in zip(chunk.grads, grads):
                if grad is not None:
                    buffer.copy_(grad)
        unused = {j for j, grad in enumerate(grads) if grad is None}
        norms = _row_norms([g for j, g in enumerate(chunk.grads) if j not in unused], n)
        return losses.detach()[:n], norms, unused

    def _member_loss(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any
    ) -> Tensor:
        return self.loss_fn(MemberModel(self._module, (params, buffers)), batch)

    def _attach_grads(self, index: int, unused: set[int]) -> None:
        """Points the member's `.grad`s at its rows of the chunk's gradients (None where the model
        did not use a parameter, as a sequential backward leaves it), unless they still are."""
        for j, (leaf, view) in enumerate(zip(self.members[index].params, self._grad_views[index])):
            wanted = None if j in unused else view
            if leaf.grad is not wanted:
                leaf.grad = wanted

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any], eval_fn: EvalFn) -> list[dict[str, float] | None]:
        """Sums over `batches` of `eval_fn(model, batch)`, a dict of 0-dim tensors (e.g. the summed
        loss, the number correct and the count of a batch), for every member that trains, in
        evaluation mode; None for a frozen member (evaluate `member_module(i)` instead).

        The sums stay on the device until one transfer at the end."""
        results: list[dict[str, float] | None] = [None] * len(self.members)
        if not self._chunks:
            return results
        was_training = self._module.training
        self._module.eval()
        batched = vmap(self._member_eval(eval_fn), in_dims=(0, 0, None), randomness="same")
        totals: list[dict[str, Tensor]] = [{} for _ in self._chunks]
        try:
            for batch in batches:
                for chunk, chunk_totals in zip(self._chunks, totals):
                    with self.autocast():
                        values = batched(chunk.params, chunk.buffers, batch)
                    for key, value in values.items():
                        previous = chunk_totals.get(key)
                        chunk_totals[key] = value if previous is None else previous + value
        finally:
            self._module.train(was_training)
        if not totals[0]:
            raise ValueError("evaluate got no batches")
        keys = list(totals[0])
        columns = [
            torch.cat([t[key][: len(c.members)] for c, t in zip(self._chunks, totals)])
            for key in keys
        ]
        host = torch.stack([c.to(self._device, torch.float64) for c in columns], dim=1).tolist()
        for index, values in zip(self.alive, host):
            results[index] = dict(zip(keys, values))
        return results

    def _member_eval(self, eval_fn: EvalFn) -> Callable[..., dict[str, Tensor]]:
        def member_eval(params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any):
            return eval_fn(MemberModel(self._module, (params, buffers)), batch)

        return member_eval

    # -- member views and checkpoints ----------------------------------------------------------

    def member_state_dict(self, index: int) -> dict[str, Tensor]:
        """Member `index` as the model's `state_dict()` (same keys), detached copies."""
        values = self._member_tensors(index)
        return {
            key: values[self._aliases.get(key, key)].detach().clone() for key in self._state_keys
        }

    @torch.no_grad()
    def load_member_state_dict(self, index: int, state_dict: dict[str, Tensor]) -> None:
        """Loads a model `state_dict()` into member `index` (into its chunk rows if it trains)."""
        missing = sorted(set(self._state_keys) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self._state_keys))
        if missing or unexpected:
            raise KeyError(
                f"Member state dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        values = self._member_tensors(index)
        for key in self._state_keys:
            values[self._aliases.get(key, key)].copy_(state_dict[key])

    def member_module(self, index: int) -> nn.Module:
        """A standalone copy of the model holding member `index`'s parameters and buffers."""
        module = copy.deepcopy(self._module)
        module.load_state_dict(self.member_state_dict(index))
        return module

    def state_dict(self) -> dict[str, Any]:
        """Every member's model, optimizer state and status: what `load_state_dict` continues from
        bit-exactly. The global RNG (dropout) and the data order are the runner's to save."""
        return {
            "steps": self.steps,
            "members": [
                {
                    "model": self.member_state_dict(m.index),
                    "optimizer": m.optimizer.state_dict(),
                    "diverged_at": m.diverged_at,
                    "failed_at": m.failed_at,
                    "error": m.error,
                }
                for m in self.members
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()` of a group built with the same model and optimizer factories."""
        if len(state["members"]) != len(self.members):
            raise ValueError(
                f"Checkpoint of {len(state['members'])} members, group of {len(self.members)}"
            )
        self.steps = state["steps"]
        for member, saved in zip(self.members, state["members"]):
            member.diverged_at, member.failed_at = saved["diverged_at"], saved["failed_at"]
            member.error = saved["error"]
        self._restack()
        for member, saved in zip(self.members, state["members"]):
            self.load_member_state_dict(member.index, saved["model"])
            member.optimizer.load_state_dict(saved["optimizer"])

    # -- the chunks ----------------------------------------------------------------------------

    @property
    def _device(self) -> torch.device:
        return self.members[0].params[0].device

    def _member_tensors(self, index: int) -> dict[str, Tensor]:
        """Writable views of member `index`'s parameters and buffers, by name."""
        tensors = dict(zip(self._param_names, self.members[index].params))
        if index in self._own_buffers:
            return tensors | self._own_buffers[index]
        chunk, row = self._where[index]
        return tensors | {name: b[row] for name, b in chunk.buffers.items()}

    @torch.no_grad()
    def _restack(self) -> None:
        """Packs the members that train into chunks; a member that stopped moves its parameters and
        buffers into storage of its own. Every member's parameters (and `.grad`) then point at its
        values."""
        for m in self.members:
            if m.status != "training" and m.index not in self._own_buffers:
                own = self._member_tensors(m.index)
                self._own_buffers[m.index] = {n: own[n].clone() for n in self._buffer_names}
                for leaf in m.params:
                    leaf.grad = None
                    leaf.set_(leaf.detach().clone())
        alive = [m.index for m in self.members if m.status == "training"]
        width = self.width or max(len(alive), _MIN_WIDTH)
        chunks = [
            self._build_chunk(alive[i : i + width], width) for i in range(0, len(alive), width)
        ]
        for i in alive:
            self._own_buffers.pop(i, None)
        self._chunks = chunks
        self._where, self._grad_views = {}, {}
        for chunk in chunks:
            for row, index in enumerate(chunk.members):
                self._where[index] = (chunk, row)
                self._grad_views[index] = [grad[row] for grad in chunk.grads]
                leaves = self.members[index].params
                for leaf, stacked, view in zip(
                    leaves, chunk.params.values(), self._grad_views[index]
                ):
                    leaf.set_(stacked.detach()[row])
                    leaf.grad = view

    def _build_chunk(self, members: list[int], width: int) -> _Chunk:
        """A chunk holding copies of `members`' current values, padded to `width` rows."""
        rows = members + members[:1] * (width - len(members))

        def stack(tensors: Iterable[Tensor]) -> Tensor:
            return torch.stack([t.detach() for t in tensors])

        params = {
            name: stack(self.members[i].params[j] for i in rows).requires_grad_(trainable)
            for j, (name, trainable) in enumerate(zip(self._param_names, self._trainable))
        }
        buffers = {
            name: stack(self._member_tensors(i)[name] for i in rows) for name in self._buffer_names
        }
        grads = [torch.zeros_like(p) for p in params.values()]
        return _Chunk(members, params, buffers, grads)


class _RngState:
    """The global CPU generator's state and the device's: each chunk's forward starts from it."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _leaf_copy(p: Tensor) -> Tensor:
    """A leaf holding a copy of `p` that requires grad as `p` does; `set_` re-points it later."""
    return p.detach().clone().requires_grad_(p.requires_grad)


def _aliases(model: nn.Module) -> dict[str, str]:
    """state_dict keys that name a tensor registered under another name (tied weights)."""
    canonical: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        first = canonical.setdefault(id(tensor), name)
        if first != name:
            aliases[name] = first
    return aliases


def _row_norms(tensors: list[Tensor], rows: int) -> Tensor:
    """The Euclidean norm over all `tensors` of each of their first `rows` rows: (rows,)."""
    if not tensors:
        return torch.zeros(rows)
    per_tensor = [torch.linalg.vector_norm(t[:rows].flatten(1), dim=1) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(per_tensor, dim=1), dim=1)
