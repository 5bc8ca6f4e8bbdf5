"""fairseq wrappers of momo.Momo and momo.MomoAdam (see the package docstring for the loss bookkeeping)."""

import ast
import atexit
import csv
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 (see _TraceConfig)

import torch
import torch.distributed as dist
from fairseq import metrics
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import OPTIMIZER_REGISTRY, FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from experiments.runner.diagnostics import TRACE_COLUMNS
from momo import Momo, MomoAdam

logger = logging.getLogger(__name__)

# The values of a trace row after its step and (empty) epoch: fairseq's log says which update ends an
# epoch, so the record converter fills the epoch in (experiments/workloads/iwslt14/convert.py).
_VALUES = TRACE_COLUMNS[2:]

_NO_LOSS = (
    "MoMo got no loss for this update: optimizer.backward(loss) was not called on the MoMo wrapper. "
    "fairseq's --fp16/--bf16/--memory-efficient-fp16/--amp wrappers call loss.backward() themselves "
    "and never pass the loss on; MoMo runs in fp32 only (see experiments/workloads/iwslt14/fairseq_plugin/__init__.py)."
)


# fairseq reads these annotations to build argparse options and understands only typing's spellings
# (Optional[str], List[float]), not PEP 604/585 ones: hence no `from __future__ import annotations`.
@dataclass
class _TraceConfig(FairseqDataclass):
    momo_trace: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "CSV file for one row per update: step, epoch, loss, lr, step_size, ..."},
    )
    momo_trace_flush: int = field(
        default=100, metadata={"help": "write the buffered trace rows every this many updates"}
    )


@dataclass
class FairseqMomoConfig(_TraceConfig):
    momo_beta: float = field(default=0.9, metadata={"help": "MoMo momentum (EMA) parameter"})
    momo_lb: float = field(default=0.0, metadata={"help": "lower bound of the loss (MoMo*: floor)"})
    momo_bias_correction: bool = field(default=False, metadata={"help": "bias-corrected averages"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (proximal)"})
    lr: List[float] = II("optimization.lr")  # noqa: UP006, RUF009 (the fairseq idiom)


@dataclass
class FairseqMomoAdamConfig(_TraceConfig):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas, as for fairseq's Adam"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon, as for fairseq's Adam"})
    momo_lb: float = field(default=0.0, metadata={"help": "lower bound of the loss (MoMo*: floor)"})
    # A flag that defaults to off: fairseq turns a bool field that defaults to True into a store_false
    # option, which would read backwards on the command line.
    momo_decoupled_decay: bool = field(
        default=False,
        metadata={"help": "AdamW-like decoupled weight decay (MomoAdam divide=False)"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    lr: List[float] = II("optimization.lr")  # noqa: UP006, RUF009 (the fairseq idiom)


class StepTrace:
    """Per-update rows of MoMo's step sizes, buffered as tensors (no host sync per update) and appended
    to a CSV file every ``flush_every`` updates, at checkpoints and at exit. Only rank 0 writes. After a
    resume the file may repeat updates since the last checkpoint: readers keep the last row per update."""

    def __init__(self, path: str | Path, flush_every: int = 100) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self._rows: list[tuple[int, torch.Tensor]] = []
        atexit.register(self.flush)

    def append(self, update: int, values: torch.Tensor) -> None:
        self._rows.append((update, values.detach().clone()))
        if len(self._rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        values = torch.stack([v for _, v in rows]).cpu().tolist()  # one device sync per flush
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(TRACE_COLUMNS)
            for (update, _), row in zip(rows, values, strict=True):
                # NaN: a diagnostic the optimizer does not have (MoMo's lb estimate)
                writer.writerow([update, "", *("" if v != v else repr(v) for v in row)])


class _FairseqMomoBase(FairseqOptimizer):
    """Keeps the update's loss from ``backward`` and passes it to MoMo's ``step(loss=...)``."""

    momo_class: type[torch.optim.Optimizer]
    use_fstar: bool = False
    _STATE_KEY = "fairseq_plugin_updates"  # our update counter inside fairseq's optimizer state

    def __init__(self, cfg: Any, params: list[torch.nn.Parameter]) -> None:
        super().__init__(cfg)
        self._optimizer = self.momo_class(params, **self.optimizer_config)
        self._loss: torch.Tensor | None = None  # sum of this update's losses, scaled like the grads
        self._num_updates = 0
        self._trace = StepTrace(cfg.momo_trace, cfg.momo_trace_flush) if cfg.momo_trace else None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        loss = loss.detach()
        # Summed over --update-freq micro-batches, as their gradients accumulate in p.grad.
        self._loss = loss if self._loss is None else self._loss + loss

    def multiply_grads(self, c: float | torch.Tensor) -> None:
        super().multiply_grads(c)
        if self._loss is not None:
            self._loss = self._loss * (c.to(self._loss.device) if torch.is_tensor(c) else c)

    def zero_grad(self) -> None:
        super().zero_grad()
        self._loss = None

    def step(self, closure: Any = None, scale: float = 1.0, groups: Any = None) -> None:
        if groups is not None:
            raise ValueError(
                "MoMo's model is global over all parameters: stepping groups is not supported"
            )
        if scale != 1.0:
            self.multiply_grads(1.0 / scale)
        if closure is not None:
            loss = self.optimizer.step(closure)
        elif self._loss is None:
            raise RuntimeError(_NO_LOSS)
        else:
            loss = self.optimizer.step(loss=self._loss)
        self._loss = None
        self._num_updates += 1
        self._record_step_sizes(loss)

    def _record_step_sizes(self, loss: torch.Tensor | float) -> None:
        group = self.param_groups[0]  # fairseq builds a single param group
        step_size, adaptive_step = group["step_size"], group["adaptive_step"]
        lb_estimate = group.get("lb_estimate")
        # Tensors go to fairseq's meters as is: they are only read at log time.
        metrics.log_scalar("step_size", step_size, weight=1, round=8)
        metrics.log_scalar("adaptive_step", adaptive_step, weight=1, round=8)
        if lb_estimate is not None:
            metrics.log_scalar("lb_estimate", lb_estimate, weight=1, round=6)
        if self._trace is not None:
            row = {"loss": loss, "lr": group["lr"], "step_size": step_size}
            row |= {"adaptive_step": adaptive_step, "lb_estimate": lb_estimate}
            values = torch.stack(
                [
                    torch.as_tensor(float("nan") if row[key] is None else row[key]).to(
                        step_size.device, torch.float64
                    )
                    for key in _VALUES
                ]
            )
            self._trace.append(self._num_updates, values)

    @property
    def optimizer_config(self) -> dict[str, Any]:
        """Keyword arguments of the momo optimizer; fairseq also applies them over a checkpoint's
        param groups on resume (e.g. a new lr)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        if self._trace is not None:
            self._trace.flush()  # a checkpoint: keep the trace up to it on disk
        return {**super().state_dict(), self._STATE_KEY: self._num_updates}

    def load_state_dict(self, state_dict: dict[str, Any], optimizer_overrides: Any = None) -> None:
        state_dict = dict(state_dict)
        self._num_updates = int(state_dict.pop(self._STATE_KEY, 0))
        super().load_state_dict(state_dict, optimizer_overrides)


def _lr(cfg: Any) -> float:
    return cfg.lr[0] if isinstance(cfg.lr, Collection) else cfg.lr


def _betas(value: Any) -> tuple[float, float]:
    betas = ast.literal_eval(value) if isinstance(value, str) else OmegaConf.to_container(value)
    return tuple(float(b) for b in betas)  # type: ignore[return-value]


class FairseqMomo(_FairseqMomoBase):
    momo_class = Momo

    @property
    def optimizer_config(self) -> dict[str, Any]:
        return {
            "lr": _lr(self.cfg),
            "beta": self.cfg.momo_beta,
            "lb": self.cfg.momo_lb,
            "bias_correction": self.cfg.momo_bias_correction,
            "weight_decay": self.cfg.weight_decay,
            "use_fstar": self.use_fstar,
        }


class FairseqMomoStar(FairseqMomo):
    use_fstar = True


class FairseqMomoAdam(_FairseqMomoBase):
    momo_class = MomoAdam

    @property
    def optimizer_config(self) -> dict[str, Any]:
        return {
            "lr": _lr(self.cfg),
            "betas": _betas(self.cfg.adam_betas),
            "eps": self.cfg.adam_eps,
            "lb": self.cfg.momo_lb,
            "divide": not self.cfg.momo_decoupled_decay,
            "weight_decay": self.cfg.weight_decay,
            "use_fstar": self.use_fstar,
        }


class FairseqMomoAdamStar(FairseqMomoAdam):
    use_fstar = True


OPTIMIZERS = {
    "momo": (FairseqMomo, FairseqMomoConfig),
    "momo_star": (FairseqMomoStar, FairseqMomoConfig),
    "momo_adam": (FairseqMomoAdam, FairseqMomoAdamConfig),
    "momo_adam_star": (FairseqMomoAdamStar, FairseqMomoAdamConfig),
}


def register() -> None:
    """Add the optimizers to fairseq's registry. Idempotent, so this module may be imported both as
    ``experiments.workloads.iwslt14.fairseq_plugin`` and as fairseq's ``--user-dir`` module ``fairseq_plugin``."""
    for name, (cls, config) in OPTIMIZERS.items():
        if name not in OPTIMIZER_REGISTRY:
            register_optimizer(name, dataclass=config)(cls)
