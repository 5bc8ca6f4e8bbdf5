"""What a run is: its scientific config, its id, its name; and the id of a sweep (docs/design.md §4).

One definition for every reader: the runner names a record's directory with `run_id`, the sweep finds its
runs by the same ids, and the analysis can ask `scientific_config` which keys of a record's config.yaml
are settings. This module reads no files and imports nothing of the runner.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys of the resolved config that do not change a run's result: where files go and come from, what logs
# it, which device runs it, whether it checkpoints. Dotted paths reach into groups (where the data came
# from, a download or not, does not change the run). Everything else is scientific.
NOT_SCIENTIFIC = (
    "logger",
    "results_dir",
    "data_dir",
    "device",
    "hydra",
    "checkpoint",
    "task.download",
)


def scientific_config(config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a run's config that its result depends on, with numbers by value.

    `config` is the composed config (resolved here) or a record's config.yaml as loaded. The keys of
    NOT_SCIENTIFIC are dropped; an integral float becomes an int (`optimizer.lr=1` and `optimizer.lr=1.0`
    are one run, and so are `1e3` and `1000`); booleans stay booleans. A number that is not finite raises
    ValueError naming its key: no run trains with a NaN hyperparameter, and no id hashes one."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    kept = _normalise(dict(config), "")
    for path in NOT_SCIENTIFIC:
        *parents, key = path.split(".")
        node = kept
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return kept


def _normalise(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _normalise(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Invalid {key}: {value} (a finite number)")
        return int(value) if value.is_integer() else value
    return value


def run_id(config: DictConfig | Mapping[str, Any]) -> str:
    """First 12 hex chars of the sha256 of the canonical JSON of `scientific_config(config)`."""
    canonical = json.dumps(
        scientific_config(config), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_name(config: DictConfig | Mapping[str, Any]) -> str:
    """A person's name for a run: `momo lr=1 seed=0` (log lines, W&B run names)."""
    return f"{config['optimizer']['name']} lr={config['optimizer']['lr']:g} seed={config['seed']}"


def sweep_id(experiment: str, run_ids: Iterable[str]) -> str:
    """`<experiment>-<8 hex>`: the hash of the set of a sweep's run ids.

    It changes exactly when the sweep's runs change (its grid, its seeds, a scientific override such as
    `profile=smoke`) and not with where it runs or what logs it, so a rerun continues the same sweep."""
    digest = hashlib.sha256("\n".join(sorted(set(run_ids))).encode()).hexdigest()[:8]
    return f"{experiment}-{digest}"
