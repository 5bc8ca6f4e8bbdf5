"""Which run records belong to a sweep: exactly the runs of its protocol, and why the others do not.

A sweep file (configs/sweep/<experiment>.yaml) plus the overrides it was run with (`profile=smoke`,
`epochs=40`) define the runs a figure is made of. `sweep_protocol` composes each of them as the runner
would (experiments.runner.sweep.expected_runs, Hydra's compose) and keeps its *scientific* config: the
flattened config without the keys that do not change a result (NON_SCIENTIFIC: logger, device, paths,
checkpointing). `select` then compares every record's scientific config with the expected ones:

- a record equal to an expected run is selected (one record per expected run: a second copy of the same
  run, e.g. from a run id scheme that changed, is left out as a duplicate);
- any other record is left out with the reason, named by the config keys in which it differs from the
  closest expected run: "epochs=2 (the sweep's protocol: 10)";
- a failed record is left out (it has no result; `make sweep` reruns it);
- expected runs without a record are `missing`.

Comparison is by value, not by run id, so it does not depend on how run ids are computed, and numbers
compare as numbers (lr 1 equals lr 1.0).

    selection = select_sweep_runs("fashion_mnist_mlp", "results", overrides=["profile=smoke"])
    selection.runs          # the selected records (completed or diverged), one per expected run
    selection.left_out      # [LeftOut(path, run_id, reason)]
    selection.missing       # [ExpectedRun] without a record
    selection.status        # {"completed": 90, "diverged": 6, "failed": 0, "missing": 0}
    selection.reasons()     # one line per reason: "2 runs with epochs=2 (the sweep's protocol: 10)"
"""

from __future__ import annotations

import collections
import copy
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments import layout
from experiments.runner.sweep import expected_runs, load_sweep

# Config keys (and dotted prefixes) that never change a run's result: where it ran, where its files
# go, how it logs and checkpoints. They neither tell two runs apart nor make a run a different setting.
NON_SCIENTIFIC = (
    "run_id",  # a record's own id, should a runner write it into the config
    "logger",
    "results_dir",
    "data_dir",
    "device",
    "hydra",
    "checkpoint",
    "trace_rows",
    "task.download",
    "task.num_workers",
    "fairseq.log_interval",
    "fairseq.num_workers",
)
# Shown first when a record differs in several keys: what a protocol is made of.
PROTOCOL_PREFIXES = ("epochs", "profile", "task", "schedule", "amp", "experiment")
ABSENT = "<absent>"
FINISHED = ("completed", "diverged")


def is_scientific(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in NON_SCIENTIFIC)


def _normalise(value: Any) -> Any:
    """Numbers by value (1 == 1.0), lists as tuples, so that equal settings compare equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return tuple(_normalise(v) for v in value)
    return value


def scientific(config: dict) -> dict[str, Any]:
    """The flattened (dotted keys), normalised config without its NON_SCIENTIFIC keys."""
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{path}.")
            else:
                flat[path] = _normalise(value)

    walk(config, "")
    return {k: v for k, v in flat.items() if is_scientific(k)}


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(sorted(config.items()), default=str)


@dataclass(frozen=True)
class ExpectedRun:
    """One run a sweep asks for: its overrides and its scientific config."""

    overrides: tuple[str, ...]
    config: dict[str, Any] = field(hash=False, compare=False)

    @property
    def optimizer(self) -> str:
        return str(self.config.get("optimizer.name"))

    @property
    def lr(self) -> float:
        return float(self.config.get("optimizer.lr", math.nan))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass(frozen=True)
class LeftOut:
    path: Path
    run_id: str
    status: str
    reason: str


@dataclass
class Selection:
    """The records of one experiment, sorted into the sweep's runs and the rest."""

    experiment: str
    expected: int  # how many runs the sweep asks for
    runs: list[Path]  # selected records, completed or diverged
    left_out: list[LeftOut]
    missing: list[ExpectedRun]
    status: dict[str, int] = field(default_factory=dict)  # the sweep's runs by status, and missing

    def reasons(self) -> list[str]:
        """One line per reason a record was left out, with its count, most frequent first."""
        counts = collections.Counter(r.reason for r in self.left_out)
        return [f"{n} run{'s' if n > 1 else ''} {reason}" for reason, n in counts.most_common()]


def _compose_expected(
    experiment: str, overrides: Sequence[str], sweep_file: Path | None
) -> list[ExpectedRun]:
    parser = OverridesParser.create()
    runs = [
        tuple(r) for r in expected_runs(experiment, load_sweep(experiment, sweep_file), overrides)
    ]
    bases: dict[tuple[str, ...], Any] = {}
    expected = []
    with initialize_config_dir(config_dir=str(layout.CONFIG_DIR), version_base="1.3"):
        for run in runs:
            # Composing is slow (Hydra), so compose once per choice of config groups and set the
            # plain values of each run on a copy: the same config as composing each run.
            parsed = parser.parse_overrides(list(run))
            groups = tuple(o.input_line for o in parsed if _is_group_choice(o))
            values = [o for o in parsed if not _is_group_choice(o)]
            if groups not in bases:
                bases[groups] = compose(
                    "train", overrides=[*groups, *(o.input_line for o in values)]
                )
            cfg = copy.deepcopy(bases[groups])
            for o in values:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add())
            container = OmegaConf.to_container(cfg, resolve=True)
            expected.append(ExpectedRun(run, scientific(container)))
    return expected


def _is_group_choice(override: Any) -> bool:
    key = override.key_or_group
    if override.is_delete() or "@" in key or "/" in key:
        return True  # composed, never set by hand
    return (layout.CONFIG_DIR / key.replace(".", "/")).is_dir()


def sweep_protocol(
    experiment: str, overrides: Sequence[str] = (), sweep_file: Path | None = None
) -> list[ExpectedRun]:
    """Every run of the sweep of `experiment` run with `overrides` (as `make sweep ARGS=...`)."""
    return _compose_expected(experiment, overrides, sweep_file)


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def _differences(config: dict[str, Any], other: dict[str, Any]) -> list[str]:
    keys = [
        k for k in config.keys() | other.keys() if config.get(k, ABSENT) != other.get(k, ABSENT)
    ]
    return sorted(keys, key=lambda k: (not k.startswith(PROTOCOL_PREFIXES), k))


def _reason(config: dict[str, Any], expected: Sequence[ExpectedRun]) -> str:
    """Why `config` is none of the expected runs: the keys in which it differs from the closest one."""
    optimizer = config.get("optimizer.name")
    same = [e for e in expected if e.optimizer == str(optimizer)]
    if not same:
        sweeps = ", ".join(sorted({e.optimizer for e in expected}))
        return f"with optimizer {optimizer} (the sweep's: {sweeps})"
    closest = min(same, key=lambda e: len(_differences(config, e.config)))
    parts = []
    keys = _differences(config, closest.config)
    for key in keys[:3]:
        ours = _text(config.get(key, ABSENT))
        sweep_values = sorted({_text(e.config.get(key, ABSENT)) for e in same})
        if len(sweep_values) == 1:
            parts.append(f"{key}={ours} (the sweep's protocol: {sweep_values[0]})")
        else:
            parts.append(f"{key}={ours} (the sweep's: {', '.join(sweep_values)})")
    more = f" and {len(keys) - 3} more keys" if len(keys) > 3 else ""
    return "with " + "; ".join(parts) + more


def _read(path: Path) -> tuple[dict, dict[str, Any]]:
    info = json.loads((path / layout.RUN_INFO).read_text())
    config_file = path / layout.CONFIG
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    return info, scientific(config or {})


_PREFERENCE = {"completed": 0, "diverged": 1, "failed": 2}


def select(
    record_dirs: Iterable[Path], expected: Sequence[ExpectedRun], experiment: str = ""
) -> Selection:
    """Sorts records into the expected runs (one record each), the left-out ones and the missing runs."""
    by_config = {_canonical(e.config): e for e in expected}
    claimed: dict[str, tuple[Path, dict]] = {}
    left_out: list[LeftOut] = []
    records = [(path, *_read(path)) for path in record_dirs]
    # The best record of a run wins the run (completed before diverged before failed, then the first).
    records.sort(
        key=lambda r: (_PREFERENCE.get(r[1].get("status"), 3), str(r[1].get("finished_at")))
    )
    for path, info, config in records:
        run_id, status = str(info.get("run_id", path.name)), str(info.get("status"))
        key = _canonical(config)
        if key not in by_config:
            left_out.append(LeftOut(path, run_id, status, _reason(config, expected)))
        elif key in claimed:
            left_out.append(LeftOut(path, run_id, status, "repeating a run already counted"))
        elif status not in FINISHED:
            left_out.append(
                LeftOut(path, run_id, status, f"{status} (make sweep reruns failed runs)")
            )
            claimed[key] = (path, info)
        else:
            claimed[key] = (path, info)
    runs = sorted(p for p, info in claimed.values() if info.get("status") in FINISHED)
    missing = [e for k, e in by_config.items() if k not in claimed]
    status = collections.Counter(str(info.get("status")) for _, info in claimed.values())
    status = {s: status.get(s, 0) for s in ("completed", "diverged", "failed")} | {
        "missing": len(missing)
    }
    return Selection(experiment, len(expected), runs, left_out, missing, status)


def select_sweep_runs(
    experiment: str,
    results_dir: str | Path = "results",
    overrides: Sequence[str] = (),
    sweep_file: Path | None = None,
) -> Selection:
    """The records of `experiment` under `results_dir`, sorted against its sweep's protocol."""
    expected = sweep_protocol(experiment, overrides, sweep_file)
    return select(layout.record_dirs(results_dir, experiment), expected, experiment)
