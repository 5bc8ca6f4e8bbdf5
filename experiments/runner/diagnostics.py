"""The step-size diagnostics of an optimizer and what a run record keeps of them (docs/design.md §1, §4).

After each step an optimizer may leave, in its first param group, `step_size` (tau, the step taken),
`adaptive_step` (t1) and `lb_estimate` (MoMo*'s estimate of the lower bound). A step is "capped" when the
cap lr/rho_k bound, i.e. when the step taken is below the adaptive step: tau = min(lr/rho_k, t1) < t1.

One definition for every runner: the training loop and the workloads that train with their own trainer
(IWSLT14 with fairseq) compute a record's `optim/*` statistics with `step_statistics` and write its per-step
trace with `TRACE_COLUMNS`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

DIAGNOSTICS = ("step_size", "adaptive_step", "lb_estimate")
TRACE_COLUMNS = ("step", "epoch", "loss", "lr", *DIAGNOSTICS)  # trace.csv, in this order


def step_statistics(series: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The `optim/*` statistics of one epoch from its per-step diagnostics (a key with no values is
    absent): median, min and max of tau and t1, the fraction of capped steps (tau < t1) and the epoch's
    last lower-bound estimate."""
    out: dict[str, float] = {}
    for key in ("step_size", "adaptive_step"):
        if values := series.get(key):
            out |= {
                f"optim/{key}_median": statistics.median(values),
                f"optim/{key}_min": min(values),
                f"optim/{key}_max": max(values),
            }
    taus, t1s = series.get("step_size"), series.get("adaptive_step")
    if taus and t1s:
        capped = [tau < t1 for tau, t1 in zip(taus, t1s, strict=True)]
        out["optim/cap_fraction"] = sum(capped) / len(capped)
    if values := series.get("lb_estimate"):
        out["optim/lb_estimate"] = values[-1]
    return out
