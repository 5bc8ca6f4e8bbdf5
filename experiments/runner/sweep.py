"""A paper figure's sweep from `configs/sweep/<experiment>.yaml`: one Hydra multirun per optimizer block.

    python -m experiments.runner.sweep <experiment> [--launcher local|parallel|slurm|slurm_cpu] [override ...]
    python -m experiments.runner.sweep <experiment> --status [override ...]
    python -m experiments.runner.sweep <experiment> --dry-run            # print the Hydra commands

The learning-rate grids differ per optimizer, so a sweep is a union of cartesian products, which Hydra's
basic sweeper cannot express in one multirun. The sweep file lists the blocks; each becomes

    python -m experiments.train -m experiment=<id> optimizer=<name> optimizer.lr=<a>,<b>,... seed=0,1,2

which is exactly what a user would type, so the runner's resumability (a finished record returns at once,
a partial one resumes from its checkpoint) makes the whole sweep resumable. Extra overrides (profile=smoke,
results_dir=..., hydra.launcher.n_jobs=4) go to every block.

The sweep's id (`<experiment>-<8 hex>`, identity.sweep_id) hashes its expected run ids: it names the
sweep's W&B group (every block gets `logger.group=<id>` unless the overrides set one) and, on SLURM, its
jobs. While the blocks run, a progress line counts the expected runs' records (done, failed, running: a
run whose lock is held; queued: SLURM array tasks waiting in squeue) with the elapsed time and an ETA.
A SLURM launcher's request is checked against `sinfo` before anything is submitted (experiments.runner.slurm).
"""

from __future__ import annotations

import argparse
import collections
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from experiments.layout import CONFIG_DIR, RunPaths
from experiments.runner import errors, group, identity, records, slurm, train

log = logging.getLogger(__name__)

# --launcher -> the hydra/launcher config (None: Hydra's basic launcher, one run after the other)
LAUNCHERS = {"local": None, "parallel": "parallel", "slurm": "slurm", "slurm_cpu": "slurm_cpu"}
STATUSES = ("completed", "diverged", "failed", "missing")
# Runs per batched group by default. The default figure's 96 runs make 6 groups of 16, which keep the
# two workers of `--launcher parallel` on a 2-core CPU busy to the end (3 groups of 32 would leave one
# idle for a third of the sweep). The group's memory is K copies of the parameters, optimizer states
# and activations: lower it for large models, raise it on a GPU (docs/design.md §7).
GROUP_SIZE = 16


@dataclass(frozen=True)
class Block:
    """One Hydra multirun of a sweep: an optimizer config and its swept overrides."""

    optimizer: str
    params: dict[str, list]

    def overrides(self) -> list[str]:
        """`key=v1,v2,...` in Hydra's sweep syntax (a single value is a plain override)."""
        return [
            f"{key}={','.join(map(_hydra_value, values))}" for key, values in self.params.items()
        ]


def _hydra_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def load_sweep(experiment: str, path: Path | None = None) -> list[Block]:
    """The blocks of `configs/sweep/<experiment>.yaml` (or of the sweep file `path`).

    A block's own values replace the shared `params` of the same key; a block given as a list of
    mappings becomes one multirun per mapping (for coupled values such as lr and weight decay).
    """
    path = Path(path) if path is not None else CONFIG_DIR / "sweep" / f"{experiment}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
        raise FileNotFoundError(f"No sweep {path}; known sweeps: {', '.join(known)}")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if spec.get("experiment") != experiment:
        raise ValueError(
            f"{path} says experiment={spec.get('experiment')!r}, expected {experiment!r}"
        )
    shared = {k: _as_list(v) for k, v in (spec.get("params") or {}).items()}
    blocks = []
    for optimizer, entry in spec["optimizers"].items():
        for params in entry if isinstance(entry, list) else [entry or {}]:
            merged = shared | {k: _as_list(v) for k, v in params.items()}
            blocks.append(Block(optimizer, merged))
    return blocks


def multirun_command(
    experiment: str, block: Block, launcher: str = "local", extra: Sequence[str] = ()
) -> list[str]:
    """The `python -m experiments.train -m ...` command of one block."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"Invalid launcher: {launcher!r} ({', '.join(LAUNCHERS)})")
    command = [sys.executable, "-m", "experiments.train", "-m", f"experiment={experiment}"]
    command += [f"optimizer={block.optimizer}", *block.overrides()]
    if LAUNCHERS[launcher] is not None:
        command.append(f"hydra/launcher={LAUNCHERS[launcher]}")
    return command + list(extra)


def expected_runs(
    experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()
) -> Iterator[list[str]]:
    """The single-run override lists of a sweep, expanded by Hydra's own basic sweeper."""
    parser = OverridesParser.create()
    # Only keys the run config sees matter for identity: drop hydra.* (launcher settings).
    extra = [o for o in extra if not o.lstrip("+~").startswith("hydra")]
    for block in blocks:
        overrides = [f"experiment={experiment}", f"optimizer={block.optimizer}", *block.overrides()]
        parsed = parser.parse_overrides(overrides=[*overrides, *extra])
        for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None):
            yield from batch


def expected_configs(
    experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()
) -> list[DictConfig]:
    """The config of every expected run, composed as `experiments.train` would and checked by the
    runner's own `validate` (a bad value stops the sweep before anything runs); one per run id (values
    equal by value, lr=1 and lr=1.0, are one run)."""
    configs: dict[RunPaths, DictConfig] = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides in expected_runs(experiment, blocks, extra):
            cfg = compose("train", overrides=overrides)
            train.validate(cfg)
            configs.setdefault(records.run_paths(cfg), cfg)
    return list(configs.values())


def expected_paths(
    experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()
) -> list[RunPaths]:
    """The record paths of every expected run, its run id the runner's own (identity.run_id), so the
    sweep cannot drift from what the runner writes."""
    return [records.run_paths(cfg) for cfg in expected_configs(experiment, blocks, extra)]


def status_of(paths: Sequence[RunPaths]) -> dict[str, list[str]]:
    """Each run's record status (completed, diverged, failed, missing) -> its run ids."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for run in paths:
        info = records.read_info(run)
        found["missing" if info is None else info["status"]].append(run.run_id)
    return dict(found)


def sweep_status(
    experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Each expected run's record status (completed, diverged, failed, missing) -> its run ids."""
    return status_of(expected_paths(experiment, blocks, extra))


def print_left_out(
    experiment: str, overrides: Sequence[str], sweep_file: Path | None, paths: Sequence[RunPaths]
) -> None:
    """The records of `experiment` that are not runs of this sweep (another protocol: a quick run
    with fewer epochs, another profile or schedule), which its aggregate leaves out, and why."""
    from experiments.analysis.selection import (
        select_sweep_runs,
    )  # it reads sweep files through here

    results_dir = paths[0].results_dir if paths else "results"
    selection = select_sweep_runs(experiment, results_dir, overrides, sweep_file)
    if selection.left_out:
        n = len(selection.left_out)
        print(f"  left out of its aggregate: {n} other record{'s' if n > 1 else ''}")
        for line in selection.reasons():
            print(f"    {line}")


def sweep_id(experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()) -> str:
    """The id of the sweep that `blocks` and the overrides `extra` describe (identity.sweep_id)."""
    return identity.sweep_id(
        experiment, (p.run_id for p in expected_paths(experiment, blocks, extra))
    )


@dataclass
class Progress:
    """The progress line of a running sweep, from the expected runs' records and locks."""

    name: str
    paths: list[RunPaths]
    job_name: str | None = None  # SLURM: the jobs' name, for squeue
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    done_at_start: int = field(init=False, default=-1)
    last: str = field(init=False, default="")
    last_time: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def counts(self, live: bool = True) -> collections.Counter:
        """Finished and failed records and, while the sweep runs (`live`), the runs whose lock is held;
        on SLURM, the running and queued array tasks of `squeue` instead (a job holds its run's lock
        only once it has started Python)."""
        counts: collections.Counter = collections.Counter()
        for run in self.paths:
            info = records.read_info(run)
            status = None if info is None else info["status"]
            if status in records.FINISHED:
                counts[status] += 1
            elif live and records.is_running(run):
                counts["running"] += 1
            elif status == "failed":
                counts["failed"] += 1
        if live and self.job_name is not None and (queue := slurm.queue(self.job_name)):
            counts["running"] = queue.get("RUNNING", 0)
            counts["queued"] = sum(queue.values()) - queue.get("RUNNING", 0)
        return counts

    def line(self, live: bool = True) -> str:
        counts = self.counts(live)
        total, done = len(self.paths), counts["completed"] + counts["diverged"]
        if self.done_at_start < 0:
            self.done_at_start = done
        text = (
            f"{self.name}: {done}/{total} done ({counts['completed']} completed, "
            f"{counts['diverged']} diverged), {counts['failed']} failed, {counts['running']} running"
        )
        if self.job_name is not None:
            text += f", {counts['queued']} queued"
        elapsed = self.clock() - self.started
        new = done - self.done_at_start
        left = total - done - counts["failed"]
        eta = _duration(elapsed / new * left) if new > 0 else "unknown"
        return f"{text}; {_duration(elapsed)} elapsed, ETA {eta if left else '0s'}"

    def report(self, every_s: float = 300.0) -> None:
        """Logs the line when its counts changed, and at least every `every_s` seconds."""
        line = self.line()
        counts = line.split(";")[0]
        if counts != self.last.split(";")[0] or self.clock() - self.last_time >= every_s:
            log.info("%s", line)
            self.last, self.last_time = line, self.clock()

    def finish(self) -> None:
        """The last line, from the records alone: nothing runs once the blocks have returned (squeue
        may still list a job that SLURM is cleaning up)."""
        log.info("%s", self.line(live=False))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


def with_group(extra: Sequence[str], group: str) -> list[str]:
    """`extra` with `logger.group=<group>`, unless it sets the group itself (`+logger.group=` is made
    `logger.group=`: the logger configs declare the key)."""
    extra = [o[1:] if o.startswith("+logger.group=") else o for o in extra]
    if any(o.startswith(("logger.group=", "++logger.group=")) for o in extra):
        return extra
    return [*extra, f"logger.group={group}"]


def check_launcher(experiment: str, launcher: str, extra: Sequence[str]) -> None:
    """A SLURM launcher's request against the cluster (`sinfo`); ValueError when no node can hold it."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"Invalid launcher: {launcher!r} ({', '.join(LAUNCHERS)})")
    if not launcher.startswith("slurm"):
        return
    overrides = [f"experiment={experiment}", f"hydra/launcher={LAUNCHERS[launcher]}", *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        request = compose("train", overrides=overrides, return_hydra_config=True).hydra.launcher
    part = slurm.check_request(launcher, request, slurm.partitions(slurm.read_sinfo()))
    log.info(
        "SLURM: partition %r (nodes of up to %d CPUs, %.0f GB, %d GPUs) takes the %s request",
        part.name,
        part.cpus,
        part.memory_mb / 1024,
        part.gpus,
        launcher,
    )


def run_sweep(
    experiment: str,
    launcher: str = "local",
    extra: Sequence[str] = (),
    only: Sequence[str] = (),
    dry_run: bool = False,
    sweep_file: Path | None = None,
    poll_s: float = 10.0,
    batched: bool = True,
    group_size: int = GROUP_SIZE,
) -> int:
    """Runs the sweep's batched groups (one Hydra multirun, one job per group) and then every block
    that trains sequentially (one multirun each), with a progress line every `poll_s` seconds when it
    changed; returns the number of multiruns that failed.

    `batched`: the runs that can share batches train in groups of at most `group_size`
    (experiments/runner/group.py); a block whose task or optimizer cannot batch, and every block when
    `batched` is False, runs sequentially."""
    check_launcher(experiment, launcher, extra)
    if batched and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ValueError(f"Invalid group size: {group_size} (an integer >= 1)")
    blocks = load_sweep(experiment, sweep_file)
    per_block = [expected_configs(experiment, [block], extra) for block in blocks]
    name = identity.sweep_id(
        experiment, (records.run_paths(c).run_id for cfgs in per_block for c in cfgs)
    )
    user_group = any(o.lstrip("+").startswith("logger.group=") for o in extra)
    extra = with_group(extra, name)
    on_slurm = launcher.startswith("slurm")
    if on_slurm:
        extra.append(f"hydra.launcher.name={name}")  # the jobs' name in squeue
    chosen = [(b, cfgs) for b, cfgs in zip(blocks, per_block) if not only or b.optimizer in only]
    runs = list(dict.fromkeys(records.run_paths(c) for _, cfgs in chosen for c in cfgs))
    progress = Progress(name, runs, job_name=name if on_slurm else None)
    grouped, sequential = _split_blocks(chosen, batched)
    log.info(
        "sweep %s: %d runs on launcher %s, %d of them batched",
        name,
        len(runs),
        launcher,
        len(grouped),
    )
    commands = []
    if grouped:
        if not user_group:  # the members' W&B group, as the sequential runs get it from `extra`
            for cfg in grouped:
                cfg.logger.group = name
        groups = group.form_groups(grouped, group_size)
        pending = [
            members
            for members in groups
            if not all(records.read_record(records.run_paths(c)) is not None for c in members)
        ]
        # a dry run writes nothing: the ids are the members' hash either way
        write = group.group_paths if dry_run else group.write_group
        ids = [write(members).run_id for members in pending]
        log.info(
            "%d batched groups of at most %d runs, %d of them with runs to train",
            len(groups),
            group_size,
            len(ids),
        )
        if ids:
            commands.append(("batched groups", group_command(experiment, ids, launcher, extra)))
    for block, cfgs in sequential:
        if all(records.read_record(records.run_paths(c)) is not None for c in cfgs):
            log.info("the %s block's %d runs are finished already", block.optimizer, len(cfgs))
            continue
        commands.append(
            (f"{block.optimizer} block", multirun_command(experiment, block, launcher, extra))
        )
    failures = 0
    for what, command in commands:
        log.info("$ %s", shlex.join(command[1:]))
        if dry_run:
            continue
        returncode = _run_with_progress(command, progress, poll_s)
        if returncode != 0:
            log.error("the %s of %s failed (exit status %d)", what, experiment, returncode)
            failures += 1
    if not dry_run:
        progress.finish()
    return failures


def _split_blocks(
    chosen: Sequence[tuple[Block, list[DictConfig]]], batched: bool
) -> tuple[list[DictConfig], list[tuple[Block, list[DictConfig]]]]:
    """The configs that train in batched groups, and the blocks that run sequentially; says once why
    a block is sequential."""
    grouped: dict[RunPaths, DictConfig] = {}
    sequential = []
    reasons: dict[str, list[str]] = {}
    for block, cfgs in chosen:
        reason = (
            "--sequential" if not batched else next(filter(None, map(group.blocker, cfgs)), None)
        )
        if reason is None:
            grouped |= {
                records.run_paths(c): c for c in cfgs if records.run_paths(c) not in grouped
            }
        else:
            sequential.append((block, cfgs))
            reasons.setdefault(reason, []).append(block.optimizer)
    for reason, optimizers in reasons.items():
        log.info("sequential runs (%s): %s", reason, ", ".join(dict.fromkeys(optimizers)))
    return list(grouped.values()), sequential


def group_command(
    experiment: str, group_ids: Sequence[str], launcher: str = "local", extra: Sequence[str] = ()
) -> list[str]:
    """The `python -m experiments.train -m ... +batched_group=<id>,...` command: one job per group."""
    command = [sys.executable, "-m", "experiments.train", "-m", f"experiment={experiment}"]
    command.append(f"+batched_group={','.join(group_ids)}")
    if LAUNCHERS[launcher] is not None:
        command.append(f"hydra/launcher={LAUNCHERS[launcher]}")
    return command + list(extra)


def _run_with_progress(command: list[str], progress: Progress, poll_s: float) -> int:
    progress.report()
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            progress.report()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment", help="a file of configs/sweep/")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--launcher", default="local", choices=list(LAUNCHERS))
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=(),
        help="comma-separated optimizer blocks to run (default: all)",
    )
    parser.add_argument("--file", type=Path, help="a sweep file other than configs/sweep/<id>.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one process per run (default: runs that share batches train in batched groups)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=GROUP_SIZE,
        help=f"at most this many runs per batched group (memory cap; default {GROUP_SIZE})",
    )
    parser.add_argument(
        "--status", action="store_true", help="count the sweep's records, run nothing"
    )
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with errors.input_errors_as_one_line():
        if args.status:
            blocks = load_sweep(args.experiment, args.file)
            paths = expected_paths(args.experiment, blocks, args.overrides)
            found = status_of(paths)
            counts = "  ".join(f"{s} {len(found.get(s, []))}" for s in STATUSES)
            name = identity.sweep_id(args.experiment, (p.run_id for p in paths))
            print(f"{args.experiment}: {len(paths)} runs expected  {counts}  (sweep {name})")
            print_left_out(args.experiment, args.overrides, args.file, paths)
            sys.exit(0)
        failures = run_sweep(
            args.experiment,
            args.launcher,
            args.overrides,
            args.only,
            args.dry_run,
            args.file,
            batched=not args.sequential,
            group_size=args.group_size,
        )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
