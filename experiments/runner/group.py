"""Batched groups: the runs of a sweep that differ only in their optimizer, trained in one process.

    python -m experiments.train -m experiment=<id> +batched_group=<group id>,<group id>,...

is what experiments.runner.sweep launches (one Hydra job per group); the group's members, their resolved
run configs, are in `<results_dir>/runs/<experiment>/.partial/<group id>/members.yaml`, written by the
sweep. The members share the task, the seed (hence every batch), the epochs and the schedule; each has its
own optimizer, built as a sequential run builds it (experiments.runner.optim, param groups included), and
its own schedule. One BatchedGroup (experiments/runner/batched.py) runs every forward and backward for all
of them, the evaluation included (docs/design.md §7).

Each member ends as a sequential run ends: the same record files, written through the same functions
(experiments.runner.train and .loop), plus `"batched": {"members": K, "group": <id>}` in run.json. So
finished records are skipped, `make status`, aggregation and plots see no difference, and batched and
sequential runs of one sweep mix freely. In detail:

- Each member holds its run's lock for the group's lifetime; a finished member is skipped; a member that
  another process holds is left to it.
- A member whose loss turns non-finite leaves the group at that step and finishes its epoch as a
  sequential run would: it takes that step on its own and the next ones until its next trace point, then
  it is evaluated and recorded `diverged`. The others train on, untouched (batched.py's isolation).
- A member whose optimizer raises is recorded `failed` with the traceback; a rerun trains it again.
- The group checkpoints after every epoch (`.partial/<group id>/checkpoint.pt`: every training member's
  model, optimizer, schedule and epoch state, and the shared random states); a killed group, rerun,
  continues from it. The directory goes when the group is done.
- Runs that cannot train batched are trained one after the other by the sequential runner, in the same
  job: a member with a sequential checkpoint of its own (it resumes from it), or one that the group's
  checkpoint does not hold. The sweep never groups runs whose task or optimizer cannot batch (`blocker`).

Timing: each member's `time_s` and `wall_time_s` are the group's (the wall time while the member trained,
shared with K - 1 others). A member's W&B run is written when the member finishes (its epochs, then its
summary), one at a time: one process does not hold K W&B runs open at once.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.layout import RunPaths
from experiments.runner import identity, loop, optim, peers, records, train
from experiments.runner.batched import BatchedGroup
from experiments.runner.distributed import DistContext
from experiments.tasks.base import SPLITS

log = logging.getLogger(__name__)

MEMBERS = "members.yaml"  # in the group's .partial directory, beside its checkpoint
_NOT_SHARED = ("optimizer", "logger")  # what members of one group may differ in


def blocker(cfg: DictConfig) -> str | None:
    """Why the run of `cfg` cannot train in a batched group, or None when it can: its experiment has a
    trainer of its own, its task is not `batchable`, or its optimizer has modes of its own (`train()`
    and `eval()`, e.g. schedule-free) or averages its iterates (an `averager` node): the group neither
    switches an optimizer's mode nor evaluates averaged weights."""
    if cfg.get("runner"):
        return f"experiment {cfg.experiment} trains with its own trainer ({cfg.runner})"
    task_class = _class_of(cfg.task)
    if not getattr(task_class, "batchable", False):
        return f"task {getattr(task_class, '__name__', cfg.task.get('_target_'))} is not batchable"
    if "averager" in cfg.optimizer:
        return f"optimizer {cfg.optimizer.name} averages its iterates"
    optimizer_class = _class_of(cfg.optimizer)
    if any(callable(getattr(optimizer_class, mode, None)) for mode in ("train", "eval")):
        return f"optimizer {cfg.optimizer.name} has train() and eval() modes"
    return None


def _class_of(node: DictConfig) -> Any:
    try:
        return hydra.utils.get_class(node._target_)
    except Exception:  # a workload's module may not import here (fairseq, torchrec)
        return None


def shared_key(cfg: DictConfig) -> str:
    """What members of one group must share: the resolved config but the optimizer and the logger."""
    config = OmegaConf.to_container(cfg, resolve=True)
    shared = {k: v for k, v in config.items() if k not in _NOT_SHARED}
    return json.dumps(shared, sort_keys=True, default=str)


def group_id(run_ids: Iterable[str]) -> str:
    """`group-<12 hex>`: the hash of the members' run ids (a rerun of a sweep forms the same groups,
    finds their checkpoints and skips their finished members)."""
    digest = hashlib.sha256("\n".join(sorted(set(run_ids))).encode()).hexdigest()[:12]
    return f"group-{digest}"


def form_groups(cfgs: Sequence[DictConfig], max_members: int) -> list[list[DictConfig]]:
    """The runs of `cfgs` (all batchable) in groups of at most `max_members` that share everything but
    the optimizer; a set of n such runs makes ceil(n / max_members) groups of near-equal size, the runs
    dealt round-robin (a group mixes optimizers and learning rates, so that divergences, which free a
    group's compute, spread evenly)."""
    if max_members < 1:
        raise ValueError(f"Invalid group size: {max_members} (an integer >= 1)")
    by_key: dict[str, list[DictConfig]] = {}
    for cfg in cfgs:
        by_key.setdefault(shared_key(cfg), []).append(cfg)
    groups = []
    for members in by_key.values():
        n = math.ceil(len(members) / max_members)
        groups += [members[i::n] for i in range(n)]
    return groups


def group_paths(cfgs: Sequence[DictConfig]) -> RunPaths:
    """Where the group of `cfgs` keeps its members file, checkpoint and lock: the paths of a run whose
    id is the group's (`.partial/<group id>/`, `.locks/<group id>.lock`)."""
    return RunPaths(
        Path(cfgs[0].results_dir),
        cfgs[0].experiment,
        group_id(records.run_paths(cfg).run_id for cfg in cfgs),
    )


def write_group(cfgs: Sequence[DictConfig]) -> RunPaths:
    """Writes the members file of the group of `cfgs` (their resolved configs); returns its paths."""
    paths = group_paths(cfgs)
    paths.partial.mkdir(parents=True, exist_ok=True)
    members = OmegaConf.create([OmegaConf.to_container(cfg, resolve=True) for cfg in cfgs])
    tmp = paths.partial / f"{MEMBERS}.tmp{os.getpid()}"
    OmegaConf.save(members, tmp)
    os.replace(tmp, paths.partial / MEMBERS)
    return paths


def read_group(paths: RunPaths) -> list[DictConfig]:
    members = paths.partial / MEMBERS
    if not members.is_file():
        raise FileNotFoundError(
            f"No batched group {paths.run_id}: {members} is missing (the sweep writes it, and a group "
            f"removes it when done); rerun the sweep: python -m experiments.runner.sweep "
            f"{paths.experiment}"
        )
    return list(OmegaConf.load(members))


def run(cfg: DictConfig) -> list[dict]:
    """The Hydra job of `+batched_group=<id>`: trains the group's members; returns their run.json."""
    paths = RunPaths(Path(cfg.results_dir), cfg.experiment, str(cfg.batched_group))
    return train_group(read_group(paths), paths)


def train_group(cfgs: Sequence[DictConfig], paths: RunPaths) -> list[dict]:
    """Trains the runs of `cfgs` as one batched group (kept at `paths`), those that cannot batch one
    after the other; returns every member's run.json, in the order of `cfgs`."""
    for cfg in cfgs:
        train.validate(cfg)
    if len({shared_key(cfg) for cfg in cfgs}) != 1:
        raise ValueError(f"The members of {paths.run_id} differ in more than their optimizer")
    infos: dict[int, dict] = {}
    alone: list[int] = []
    with records.run_lock(paths), contextlib.ExitStack() as locks:
        checkpoint = records.load_checkpoint(paths)
        batched = []
        for i, cfg in enumerate(cfgs):
            run_paths = records.run_paths(cfg)
            if (finished := train.finished_record(cfg, run_paths)) is not None:
                infos[i] = finished
            elif reason := _alone_because(cfg, run_paths, checkpoint):
                log.info(
                    "[%s] trains on its own after the group: %s", identity.run_name(cfg), reason
                )
                alone.append(i)
            elif not locks.enter_context(records.try_run_lock(run_paths)):
                log.info("[%s] is being trained by another process", identity.run_name(cfg))
            elif (finished := records.read_record(run_paths)) is not None:
                infos[i] = finished  # finished while this group was being formed
            else:
                batched.append(i)
        if batched:
            done = _fit([cfgs[i] for i in batched], paths, checkpoint)
            infos |= dict(zip(batched, done, strict=True))
    for i in alone:
        infos[i] = train.train(cfgs[i])
    records.remove_checkpoint(paths)  # the group is done: its members file and checkpoint go
    return [infos[i] for i in sorted(infos)]


def _alone_because(cfg: DictConfig, paths: RunPaths, checkpoint: dict | None) -> str | None:
    if reason := blocker(cfg):
        return reason
    if records.load_checkpoint(paths) is not None:
        return f"it resumes from its own checkpoint {paths.checkpoint}"
    if checkpoint is not None and paths.run_id not in checkpoint["members"]:
        return "the group's checkpoint does not hold it"
    return None


class _Member:
    """One member's run as the loop knows it, its record's paths and its progress."""

    def __init__(self, index: int, cfg: DictConfig, run: loop.Run) -> None:
        self.index = index  # in the BatchedGroup
        self.cfg = cfg
        self.run = run
        self.paths = records.run_paths(cfg)
        self.state = loop.TrainState()
        self.steps = loop.StepLog(0)
        self.alone = False  # it left the group at a non-finite step and trains on its own
        self.stopped = False  # its epoch stopped at a non-finite trace point
        self.error: str | None = None


def _fit(cfgs: Sequence[DictConfig], paths: RunPaths, checkpoint: dict | None) -> list[dict]:
    """The group's epochs (from its checkpoint, if any); returns the members' run.json."""
    cfg = cfgs[0]
    ctx = DistContext()
    device = train.resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with train._naming_experiment(cfg.experiment):
        task = hydra.utils.instantiate(
            cfg.task, data_dir=cfg.data_dir, synthetic=cfg.profile.synthetic
        )
        task.setup(device, ctx)
    model = task.build_model()
    steps_per_epoch = loop.epoch_length(task, cfg.profile.max_train_batches)
    autocast = train._autocast(cfg.amp, device)
    factories = [functools.partial(_build_optimizer, c, model) for c in cfgs]
    group = BatchedGroup(model, factories, task.loss, autocast=autocast)
    generator = torch.Generator().manual_seed(cfg.seed)
    members = []
    for c, member in zip(cfgs, group.members, strict=True):
        scheduler = optim.build_schedule(
            c.schedule, member.optimizer, epochs=c.epochs, steps_per_epoch=steps_per_epoch
        )
        proxy = _module_over(model, member.params)
        run = loop.Run(
            task=task,
            model=proxy,
            ddp_model=proxy,
            optimizer=member.optimizer,
            scheduler=scheduler,
            schedule_interval=c.schedule.interval,
            generator=generator,  # one data order for all: the seed's
            autocast=autocast,
            dist=ctx,
            trace_every=max(1, math.ceil(c.epochs * steps_per_epoch / c.trace_rows)),
            name=identity.run_name(c),
            max_train_batches=c.profile.max_train_batches,
            max_eval_batches=c.profile.max_eval_batches,
        )
        members.append(_Member(member.index, c, run))
    torch.manual_seed(cfg.seed)  # dropout, as a sequential run seeds it
    if checkpoint is not None:
        _restore(group, members, checkpoint, generator)
    batched = {"members": len(members), "group": paths.run_id}
    log.info(
        "%s: %d runs of %s (seed %s) batched, from epoch %d",
        paths.run_id,
        len(members),
        cfg.experiment,
        cfg.seed,
        members[0].state.epoch + 1,
    )
    infos: dict[int, dict] = {}
    for epoch in range(members[0].state.epoch + 1, cfg.epochs + 1):
        start = time.perf_counter()
        training = [i for i in range(len(members)) if i not in infos]
        lrs = {i: members[i].run.optimizer.param_groups[0]["lr"] for i in training}
        _train_epoch(group, members, training, epoch, steps_per_epoch, device)
        for i in training:
            if members[i].error is not None:
                infos[i] = _finish(members[i], group, "failed", batched)
            elif members[i].run.schedule_interval == "epoch":
                members[i].run.scheduler.step()
        metrics = _evaluate(group, task, cfg.profile.max_eval_batches)
        elapsed = time.perf_counter() - start
        for i in training:
            member = members[i]
            if i in infos:
                continue
            if member.alone:
                metrics[i] = loop.evaluate(member.run)
            row = loop.end_epoch(
                member.run, member.state, member.steps, metrics[i], lrs[i], elapsed, cfg.epochs
            )
            if member.alone or not math.isfinite(row["train/loss"]):
                group.stop([i])
                infos[i] = _finish(member, group, "diverged", batched)
            elif epoch == cfg.epochs:
                infos[i] = _finish(member, group, "completed", batched)
        if cfg.checkpoint and len(infos) < len(members):
            _save(paths, group, members, infos, generator)
    return [infos[i] for i in range(len(members))]


def _build_optimizer(
    cfg: DictConfig, model: torch.nn.Module, params: list[torch.Tensor]
) -> torch.optim.Optimizer:
    """The member's optimizer over `params`, built as experiments.runner.train builds a run's (the same
    param groups: they are chosen by the parameters' names)."""
    return optim.build_optimizer(
        cfg.optimizer,
        _module_over(model, params),
        weight_decay_exempt=cfg.get("weight_decay_exempt"),
    )


def _module_over(model: torch.nn.Module, params: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of `model` whose parameters are `params` (in `model.parameters()` order) themselves: a
    member's optimizer, norms and sequential steps see the member's values through it."""
    module = copy.deepcopy(model)
    leaves = {id(p): leaf for p, leaf in zip(model.parameters(), params, strict=True)}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner)._parameters[attr] = leaves[id(p)]
    return module


def _train_epoch(
    group: BatchedGroup,
    members: list[_Member],
    training: list[int],
    epoch: int,
    steps_per_epoch: int,
    device: torch.device,
) -> None:
    """One epoch of batches for the `training` members: batched while their losses are finite; a
    member whose loss or gradient turns non-finite continues on its own as a sequential run would,
    until its next trace point."""
    for i in training:
        members[i].steps = loop.StepLog(epoch)
    first_step = members[training[0]].state.step + 1
    task, generator = members[training[0]].run.task, members[training[0]].run.generator
    group.train()
    batches = itertools.islice(task.train_batches(generator), steps_per_epoch)
    for step, batch in enumerate(batches, start=first_step):
        alive = group.alive
        result = group.step(batch)
        for i in alive:
            member = members[i]
            if i in result.failed:
                member.error = group.members[i].error
            elif i in result.diverged:
                member.alone = True
                member.run.model.load_state_dict(group.member_state_dict(i))  # its buffers
            else:
                member.steps.record(
                    step,
                    result.loss[i],
                    peers.step_diagnostics(member.run.optimizer),
                    result.grad_norm[i],
                )
                if member.run.schedule_interval == "step":
                    member.run.scheduler.step()
                if loop.is_trace_step(member.run, step):
                    member.steps.trace_point(step, member.run.dist)
        for member in (members[i] for i in training):
            if member.alone and not member.stopped:
                # on its own RNG copy: the group's dropout masks stay a sequential run's
                cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    member.stopped = loop.train_step(member.run, member.steps, step, batch)
    for i in training:
        members[i].steps.finish()


def _evaluate(group: BatchedGroup, task: Any, max_batches: int | None) -> dict[int, dict]:
    """The training members' `split/metric` rows, from one batched pass per split (experiments.runner
    .loop.evaluate_split's sums, divided by their count)."""
    rows: dict[int, dict] = {i: {} for i in group.alive}
    for split in SPLITS:
        batches = itertools.islice(task.eval_batches(split), max_batches)
        for i, sums in enumerate(group.evaluate(batches, task.eval_sums)):
            if sums is not None:
                count = sums.pop("count")
                rows[i] |= {f"{split}/{key}": value / count for key, value in sums.items()}
    return rows


def _finish(member: _Member, group: BatchedGroup, status: str, batched: dict) -> dict:
    """Writes the member's record as a sequential run's (experiments.runner.train) and logs it."""
    run, cfg = member.run, member.cfg
    if not member.alone:  # its buffers (BatchNorm statistics) into the model the artefacts see
        run.model.load_state_dict(group.member_state_dict(member.index))
    info = train.run_info(cfg, run, member.state, status, member.error) | {"batched": batched}
    with train.build_logger(cfg, run.dist) as logger:
        for row in member.state.metrics:
            logger.log_epoch(row)
        logger.log_summary(info, member.state.trace)
    train.finish_record(cfg, member.paths, run, member.state, info)
    return info


def _save(
    paths: RunPaths,
    group: BatchedGroup,
    members: list[_Member],
    finished: dict[int, dict],
    generator: torch.Generator,
) -> None:
    """The group's checkpoint: what `_restore` needs to continue every unfinished member exactly."""
    records.save_checkpoint(
        paths,
        {
            "members": {
                member.paths.run_id: {
                    "model": group.member_state_dict(i),
                    "optimizer": member.run.optimizer.state_dict(),
                    "scheduler": member.run.scheduler.state_dict(),
                    "state": asdict(member.state),
                }
                for i, member in enumerate(members)
                if i not in finished
            },
            "rng": loop.rng_state(generator),
        },
    )


def _restore(
    group: BatchedGroup, members: list[_Member], checkpoint: dict, generator: torch.Generator
) -> None:
    for i, member in enumerate(members):
        saved = checkpoint["members"][member.paths.run_id]
        group.load_member_state_dict(i, saved["model"])
        member.run.optimizer.load_state_dict(saved["optimizer"])
        member.run.scheduler.load_state_dict(saved["scheduler"])
        member.state = loop.TrainState(**saved["state"])
    loop.restore_rng(checkpoint["rng"], generator)
    log.info("batched group resumes after epoch %d", members[0].state.epoch)
