"""Train one run: `python -m experiments.train experiment=<id> optimizer=<name> optimizer.lr=<lr> seed=<s>`.

The record goes to <results_dir>/runs/<experiment>/<run_id>/ (docs/design.md §4). A rerun of a completed or
diverged record returns at once; an unfinished run continues from its last per-epoch checkpoint.

Errors in the config, the data or the hyperparameters, and a results directory that cannot be written,
raise before anything is written or trained; the command line prints them as one line and exits with
status 2 (`HYDRA_FULL_ERROR=1` shows the traceback). An exception during training is recorded as status
`failed` with its traceback and does not propagate, so a multirun goes on; the single-run command line then
exits with status 1. One process at a time trains a run: a second one with the same run id waits for the
first and returns its record (records.run_lock). Under `torchrun --nproc_per_node=N` the run is
data-parallel (experiments/runner/distributed.py) and rank 0 holds the lock and writes the record.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterator

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.data import DatasetNotFoundError
from experiments.layout import CONFIG_DIR
from experiments.runner import distributed, errors, identity, loop, optim, peers, records
from experiments.runner.distributed import DistContext
from experiments.runner.loggers import Logger, NullLogger

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Trains the run that `cfg` describes and returns its run.json."""
    validate(cfg)
    paths = records.run_paths(cfg)
    if (finished := finished_record(cfg, paths)) is not None:
        return finished
    if cfg.get("runner"):  # a workload with its own trainer writes the same record (design.md §5)
        workload = importlib.import_module(cfg.runner)
        workload.check(cfg)  # before anything is written, as validate()
        with records.run_lock(paths), _naming_experiment(cfg.experiment):
            return finished_record(cfg, paths) or workload.run(cfg)
    ctx = distributed.setup(resolve_device(cfg.device).type)
    try:
        with _naming_experiment(cfg.experiment):
            run = build_run(cfg, ctx)
        with records.run_lock(paths) if ctx.is_main else contextlib.nullcontext():
            distributed.barrier(ctx)  # the other ranks wait while rank 0 waits for the lock
            # another process may have finished the run while this one waited
            return finished_record(cfg, paths) or fit_and_record(cfg, paths, run, ctx)
    finally:
        distributed.teardown(ctx)


def finished_record(cfg: DictConfig, paths: records.RunPaths) -> dict | None:
    """The run.json of the run's completed or diverged record, if there is one."""
    finished = records.read_record(paths)
    if finished is not None:
        name, status = identity.run_name(cfg), finished["status"]
        log.info("[%s] %s is %s already: %s", name, paths.run_id, status, paths.record)
    return finished


def fit_and_record(
    cfg: DictConfig, paths: records.RunPaths, run: loop.Run, ctx: DistContext
) -> dict:
    """Resumes from the checkpoint, trains, logs and writes the record; the caller holds the lock."""
    state = resume(cfg, paths, run)
    with build_logger(cfg, ctx) as logger:
        # a resumed run's epochs again: a kill may have kept them from reaching W&B
        for row in state.metrics:
            logger.log_epoch(row)
        status, error = run_epochs(cfg, paths, run, state, logger)
        info = run_info(cfg, run, state, status, error)
        logger.log_summary(info, state.trace)
    if ctx.is_main:
        finish_record(cfg, paths, run, state, info)
    # the ranks leave together: gloo can abort in its I/O thread when a peer tears down first
    distributed.barrier(ctx)
    return info


def validate(cfg: DictConfig) -> None:
    """Checks the runner's own keys and that every number of the run's scientific config is finite; the
    optimizer, schedule and task validate their own values when built."""
    if cfg.get("task") is None and cfg.get("runner") is None:
        raise ValueError(f"Experiment {cfg.experiment!r} names neither a task nor a runner")
    if not (isinstance(cfg.epochs, int) and cfg.epochs >= 1):
        raise ValueError(f"Invalid epochs: {cfg.epochs} (an integer >= 1)")
    lr = cfg.optimizer.lr
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise ValueError(f"Invalid learning rate: {lr} (a finite number > 0)")
    if cfg.amp not in ("none", "bf16"):
        raise ValueError(f"Invalid amp: {cfg.amp!r} (none or bf16)")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ValueError(f"Invalid device: {cfg.device!r} (auto, cpu or cuda)")
    if not (isinstance(cfg.trace_rows, int) and cfg.trace_rows >= 1):
        raise ValueError(f"Invalid trace_rows: {cfg.trace_rows} (an integer >= 1)")
    identity.scientific_config(cfg)  # raises on any other non-finite number


@contextlib.contextmanager
def _naming_experiment(experiment: str) -> Iterator[None]:
    """A missing dataset's hint names the experiment (a task does not know which one it serves)."""
    try:
        yield
    except DatasetNotFoundError as error:
        error.experiment = experiment
        raise


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx is not None and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def build_run(cfg: DictConfig, ctx: DistContext) -> loop.Run:
    """Task, model, optimizer and schedule; every invalid choice raises here, before any record."""
    device = resolve_device(cfg.device, ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    task = hydra.utils.instantiate(cfg.task, data_dir=cfg.data_dir, synthetic=cfg.profile.synthetic)
    task.setup(device, ctx)
    model = task.build_model()  # the task's fixed model_seed: the same init for every run
    optimizer = optim.build_optimizer(
        cfg.optimizer, model, weight_decay_exempt=cfg.get("weight_decay_exempt")
    )
    steps_per_epoch = loop.epoch_length(task, cfg.profile.max_train_batches)
    scheduler = optim.build_schedule(
        cfg.schedule, optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
    )
    torch.manual_seed(cfg.seed)  # dropout and anything else that draws from the global RNG
    total_steps = cfg.epochs * steps_per_epoch
    return loop.Run(
        task=task,
        model=model,
        ddp_model=distributed.wrap_model(model, ctx),
        optimizer=optimizer,
        scheduler=scheduler,
        schedule_interval=cfg.schedule.interval,
        generator=torch.Generator().manual_seed(cfg.seed),
        autocast=_autocast(cfg.amp, device),
        dist=ctx,
        trace_every=max(1, math.ceil(total_steps / cfg.trace_rows)),
        progress=ctx.is_main and sys.stderr.isatty(),
        name=identity.run_name(cfg),
        max_train_batches=cfg.profile.max_train_batches,
        max_eval_batches=cfg.profile.max_eval_batches,
        averager=peers.build_averager(cfg.optimizer.get("averager"), model),
    )


def _autocast(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if amp == "bf16":
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def resume(cfg: DictConfig, paths: records.RunPaths, run: loop.Run) -> loop.TrainState:
    """The state of the last per-epoch checkpoint, restored into `run`; a fresh state without one."""
    checkpoint = records.load_checkpoint(paths) if cfg.checkpoint else None
    if checkpoint is None:
        return loop.TrainState()
    state = loop.restore(run, checkpoint)
    log.info(
        "[%s] %s resumes after epoch %d from %s",
        run.name,
        paths.run_id,
        state.epoch,
        paths.checkpoint,
    )
    return state


def build_logger(cfg: DictConfig, ctx: DistContext) -> Logger:
    """The configured logger on rank 0; the other ranks log nothing.

    W&B's run is the record's: its id is the run id (a resumed run continues it), its group the sweep's
    id (`logger.group`, which experiments.runner.sweep sets) or `<experiment>-<profile>-single` for a run
    outside a sweep, its job type the optimizer, its name `<optimizer> lr=<lr> seed=<seed>`."""
    if not ctx.is_main:
        return NullLogger()
    run_id = identity.run_id(cfg)
    return hydra.utils.instantiate(cfg.logger)(
        run_id=run_id,
        name=identity.run_name(cfg),
        group=cfg.logger.get("group") or f"{cfg.experiment}-{cfg.profile.name}-single",
        job_type=cfg.optimizer.name,
        tags=[
            cfg.experiment,
            f"profile:{cfg.profile.name}",
            "synthetic" if cfg.profile.synthetic else "real-data",
            *cfg.logger.get("tags", []),
        ],
        config=OmegaConf.to_container(cfg, resolve=True) | {"run_id": run_id},
    )


def run_epochs(
    cfg: DictConfig,
    paths: records.RunPaths,
    run: loop.Run,
    state: loop.TrainState,
    logger: Logger,
) -> tuple[str, str | None]:
    """Runs the epoch loop; returns the status and, when it failed, the traceback."""

    def on_epoch_end(state: loop.TrainState) -> None:
        logger.log_epoch(state.metrics[-1])
        if cfg.checkpoint and run.dist.is_main:
            records.save_checkpoint(paths, loop.snapshot(run, state))

    try:
        return loop.fit(run, state, cfg.epochs, on_epoch_end), None
    except Exception:
        log.exception("[%s] run %s failed", run.name, paths.run_id)
        return "failed", traceback.format_exc()


def run_info(
    cfg: DictConfig,
    run: loop.Run,
    state: loop.TrainState,
    status: str,
    error: str | None,
) -> dict:
    """The run.json of docs/design.md §4."""
    return records.run_info(
        cfg,
        status=status,
        metrics=state.metrics,
        score_name=run.task.score_name,
        higher_is_better=run.task.higher_is_better,
        wall_time_s=state.wall_time_s,
        device=records.device_info(
            distributed.model_device(run.model), world_size=run.dist.world_size, amp=cfg.amp
        ),
        data=run.task.data_info,
        error=error,
    )


def finish_record(
    cfg: DictConfig, paths: records.RunPaths, run: loop.Run, state: loop.TrainState, info: dict
) -> None:
    """Writes the record, with the task's end-of-run artefacts when it completed; a failed run keeps
    its checkpoint so that the rerun resumes from it."""
    artefacts = None
    if info["status"] == "completed":
        run.model.eval()
        artefacts = functools.partial(run.task.on_train_end, run.model)  # not DDP's wrapper
    where = records.write_record(
        paths, config=cfg, metrics=state.metrics, trace=state.trace, info=info, artefacts=artefacts
    )
    if info["status"] != "failed":
        records.remove_checkpoint(paths)
    log.info(
        "[%s] %s %s after %d epochs: %s", run.name, paths.run_id, info["status"], state.epoch, where
    )


# An absolute path: Hydra resolves a relative one against the calling module, which works for
# `python -m experiments.train` but not when `main` is imported (tests, other entry points).
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict | list[dict]:
    single = HydraConfig.get().mode == RunMode.RUN
    # A single run's bad input is reported here, before Hydra adds its "Error executing job" line; in
    # a multirun that line says which job it was.
    with errors.input_errors_as_one_line() if single else contextlib.nullcontext():
        if cfg.get("batched_group"):  # a sweep's batched group (experiments/runner/group.py)
            from experiments.runner import group  # it imports this module

            infos = group.run(cfg)
        else:
            infos = [train(cfg)]
    if single and any(info["status"] == "failed" for info in infos):
        sys.exit(1)  # a single run that failed is an error; a multirun goes on to its next job
    return infos if cfg.get("batched_group") else infos[0]


def cli() -> None:
    """`python -m experiments.train`: Hydra's main, with bad input as one line and exit status 2
    (experiments/runner/errors.py)."""
    with errors.input_errors_as_one_line(), errors.hydra_reraises():
        main()


if __name__ == "__main__":
    cli()
