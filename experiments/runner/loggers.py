"""Experiment loggers (configs/logger/): nothing, or Weights & Biases.

A logger is a context manager built by Hydra as a partial and called with the run's identity (run id,
name, group, job type, tags) and its resolved config. It receives every epoch's metrics row, then the final
run.json and the run's whole per-step trace. Leaving the `with` block finishes the W&B run on every exit
path, exceptions included, so that the jobs of a multirun never share a run.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any, Protocol

from experiments.runner.diagnostics import TRACE_COLUMNS

log = logging.getLogger(__name__)


class Logger(Protocol):
    """What the runner asks of a logger. A class that subclasses it gets the context-manager methods:
    leaving the `with` block calls `finish`, with exit code 1 when an exception is passing through."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row."""

    def log_summary(self, info: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        """The run's run.json and its trace.csv rows (of every epoch, a resumed run's included), once."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; called on leaving the `with` block."""

    def __enter__(self) -> Logger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class NullLogger(Logger):
    """Logs nothing (`logger=none`); the run record is the source of truth either way."""

    def __init__(self, **identity: Any) -> None:
        self.identity = identity

    def log_epoch(self, row: dict[str, Any]) -> None:
        pass

    def log_summary(self, info: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(Logger):
    """Weights & Biases: one W&B run per run record.

    The W&B run's id is the run id and it is resumed (`resume="allow"`), so a run killed and resumed from
    its checkpoint continues one W&B run. A kill loses what W&B had not yet written, so the runner logs a
    resumed run's checkpointed epochs again; those the W&B run already has (its summary's `epoch`, known
    online) are skipped, and offline the resumed run holds every epoch. Per-epoch metrics have `epoch`
    as their x axis; the per-step trace goes once, at the end, as the table `trace` (the
    columns of trace.csv) with a line plot `trace_step_size` of the step size against the step.

    The mode is `mode` when set, else $WANDB_MODE, else "online" when an API key is configured
    ($WANDB_API_KEY, a settings file or ~/.netrc) and "offline" otherwise. $WANDB_DIR says where the local
    run directory goes.
    """

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        group: str,
        job_type: str,
        config: dict,
        tags: list[str] | None = None,
        project: str = "momo",
        entity: str | None = None,
        mode: str | None = None,
    ) -> None:
        import wandb  # the import costs ~1 s; only runs that log pay it

        self._wandb = wandb
        self._run = wandb.init(
            project=project,
            entity=entity,
            id=run_id,
            resume="allow",
            group=group,
            job_type=job_type,
            name=name,
            config=config,
            tags=sorted(set(tags or [])),
            mode=wandb_mode(mode),
        )
        self._logged_epochs = int(self._run.summary.get("epoch") or 0)  # a resumed W&B run's
        self._run.define_metric("epoch")
        for key in (
            "train/*",
            "val/*",
            "test/*",
            "optim/*",
            "lr",
            "model_norm",
            "grad_norm",
            "time_s",
        ):
            self._run.define_metric(key, step_metric="epoch")

    def log_epoch(self, row: dict[str, Any]) -> None:
        if row["epoch"] > self._logged_epochs:
            self._run.log(row)

    def log_summary(self, info: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        keep = ("status", "epochs_done", "wall_time_s", "run_id")
        self._run.summary.update({k: info[k] for k in keep if k in info})
        if not trace:
            return
        table = self._wandb.Table(
            columns=list(TRACE_COLUMNS), data=[[row.get(c) for c in TRACE_COLUMNS] for row in trace]
        )
        logged: dict[str, Any] = {"trace": table}
        if any(row.get("step_size") is not None for row in trace):
            title = f"{self._run.name}: step size"
            logged["trace_step_size"] = self._wandb.plot.line(
                table, "step", "step_size", title=title
            )
        self._run.log(logged)

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def wandb_mode(mode: str | None = None) -> str:
    """`mode` when set, else $WANDB_MODE, else online with a configured API key and offline without."""
    return mode or os.environ.get("WANDB_MODE") or _default_mode()


def _default_mode() -> str:
    import wandb

    # prompt=False, verify=False: only looks for a configured key; no prompt, no network.
    return "online" if wandb.login(prompt=False, verify=False) else "offline"
