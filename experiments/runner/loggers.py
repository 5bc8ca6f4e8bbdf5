"""Experiment loggers (configs/logger/): nothing, or Weights & Biases.

A logger is a context manager built by Hydra as a partial and called with the run's resolved config,
group (the experiment) and name (optimizer, lr, seed). It receives every epoch's metrics row and the final
run.json. Leaving the `with` block finishes the W&B run on every exit path, exceptions included, so that
the jobs of a multirun never share a run.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Logger(Protocol):
    """What the runner asks of a logger. A class that subclasses it gets the context-manager methods:
    leaving the `with` block calls `finish`, with exit code 1 when an exception is passing through."""

    def log_epoch(self, row: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        """One metrics.jsonl row and the epoch's trace.csv rows."""

    def log_summary(self, info: dict[str, Any]) -> None:
        """The run's run.json, once, at the end."""

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

    def __init__(self, *, config: dict, group: str, name: str) -> None:
        self.config, self.group, self.name = config, group, name

    def log_epoch(self, row: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        pass

    def log_summary(self, info: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(Logger):
    """Weights & Biases: config, per-epoch metrics (x axis: epoch), the thinned per-step trace of the step
    sizes as `trace/*` (x axis: trace/step) and the run's final summary.

    The mode is `mode` when set, else $WANDB_MODE, else "online" when an API key is configured
    ($WANDB_API_KEY, a settings file or ~/.netrc) and "offline" otherwise. $WANDB_DIR says where the local
    run directory goes.
    """

    def __init__(
        self,
        *,
        config: dict,
        group: str,
        name: str,
        project: str = "momo",
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        import wandb  # the import costs ~1 s; only runs that log pay it

        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            config=config,
            tags=list(tags or []),
            mode=mode or os.environ.get("WANDB_MODE") or _default_mode(),
        )
        for key in ("train/*", "val/*", "optim/*", "lr", "model_norm", "grad_norm", "time_s"):
            self._run.define_metric(key, step_metric="epoch")
        self._run.define_metric("trace/*", step_metric="trace/step")

    def log_epoch(self, row: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        for point in trace:
            self._run.log({f"trace/{k}": v for k, v in point.items() if v is not None})
        self._run.log(row)

    def log_summary(self, info: dict[str, Any]) -> None:
        keep = ("status", "epochs_done", "wall_time_s", "run_id")
        self._run.summary.update({k: info[k] for k in keep if k in info})

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def _default_mode() -> str:
    import wandb

    # prompt=False, verify=False: only looks for a configured key; no prompt, no network.
    return "online" if wandb.login(prompt=False, verify=False) else "offline"
