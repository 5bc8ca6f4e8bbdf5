"""Run directories in the record format of docs/design.md §4, made up without training.

The analysis tests build their inputs with this, so that they do not depend on the runner. Every number
is a deterministic function of (optimizer, lr, seed, epoch): a score kind (`KINDS`: accuracy, AUC, BLEU,
MSE) says how the final score depends on the lr, and the run's curve rises (or, for an MSE, falls)
towards it over the epochs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import layout
from experiments.analysis.selection import ExpectedRun, scientific
from experiments.analysis.spec import Extras, FigureSpec, Score, Variant
from experiments.runner.sweep import expected_runs, load_sweep

OPTIMIZERS = {
    "momo": {"_target_": "momo.Momo", "beta": 0.9, "bias_correction": False, "lb": 0.0},
    "momo_star": {"_target_": "momo.Momo", "beta": 0.9, "lb": 0.0, "use_fstar": True},
    "momo_adam": {"_target_": "momo.MomoAdam", "betas": [0.9, 0.999], "lb": 0.0},
    "sgd_m": {"_target_": "torch.optim.SGD", "momentum": 0.9, "dampening": 0.9},
    "adam": {"_target_": "torch.optim.Adam", "betas": [0.9, 0.999]},
    "adamw": {"_target_": "torch.optim.AdamW", "betas": [0.9, 0.999], "weight_decay": 0.01},
    "prox_sps": {"_target_": "momo.Momo", "beta": 0.0, "lb": 0.0},
}


def _peak(optimizer: str, lr: float) -> float:
    """How far (in decades, scaled) lr is from the optimizer's best lr: 0 at the best."""
    centre = -3.0 if "adam" in optimizer else -1.0
    width = 2.5 if optimizer.startswith("momo") else 1.0
    return ((math.log10(lr) - centre) / width) ** 2


@dataclass(frozen=True)
class Kind:
    """A score: its name and direction, its final value against the lr, its diverged value."""

    name: str
    higher_is_better: bool
    final: Callable[[str, float, int], float]  # (optimizer, lr, seed) -> final score
    diverged: float  # the score a diverged run records (chance level, or NaN)


KINDS = {
    "acc": Kind("acc", True, lambda o, lr, s: max(0.1, 0.95 - 0.05 * _peak(o, lr)) + 0.002 * (s - 1), 0.1),
    "auc": Kind("auc", True, lambda o, lr, s: max(0.5, 0.80 - 0.01 * _peak(o, lr)) + 0.001 * (s - 1), 0.5),
    "bleu": Kind("bleu", True, lambda o, lr, s: max(0.0, 34.0 - 1.5 * _peak(o, lr)) + 0.1 * (s - 1), 0.0),
    "mse": Kind("mse", False, lambda o, lr, s: 1e-3 * 10 ** _peak(o, lr) * (1 + 0.01 * s), math.nan),
}  # fmt: skip


def _score(kind: Kind, optimizer: str, lr: float, seed: int, epoch: int, epochs: int) -> float:
    """The final score approached over the epochs (from 0 for a score, from 10x for an MSE)."""
    end = kind.final(optimizer, lr, seed)
    progress = 1.0 - 0.5**epoch if epoch < epochs else 1.0
    return end * progress if kind.higher_is_better else end * (1 + 9 * (1 - progress))


def run_config(
    experiment: str, optimizer: str, lr: float, seed: int, *, epochs: int = 3, **settings
) -> dict:
    """A resolved run config; `settings` are dotted overrides (`optimizer.weight_decay`, `logger`)."""
    config = {
        "experiment": experiment,
        "seed": seed,
        "epochs": epochs,
        "device": "cpu",
        "results_dir": "results",
        "task": {"_target_": "experiments.tasks.FakeTask", "batch_size": 128},
        "optimizer": {"_partial_": True, "name": optimizer, "lr": lr, **OPTIMIZERS[optimizer]},
        "schedule": {"_target_": "torch.optim.lr_scheduler.ConstantLR", "_partial_": True},
        "logger": {"_target_": "experiments.runner.loggers.NullLogger", "_partial_": True},
        "profile": {"name": "default", "synthetic": True},
    }
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


def write_record(
    root: Path,
    config: dict,
    *,
    status: str = "completed",
    kind: str = "acc",
    diverge_at: int = 1,
    steps_per_epoch: int = 4,
    extra_metrics: Callable[[float], dict] | None = None,
) -> Path:
    """Writes one finished record of `config` under root/runs/<experiment>/ and returns its path.

    A diverged run stops after epoch `diverge_at` with a NaN training loss and the kind's diverged
    score; a failed run records no epoch. `extra_metrics(score)` adds metrics to every epoch.
    """
    score_kind = KINDS[kind]
    experiment, seed = config["experiment"], config["seed"]
    optimizer, lr, epochs = config["optimizer"]["name"], config["optimizer"]["lr"], config["epochs"]
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = root / "runs" / experiment / run_id
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))

    n_epochs = {"completed": epochs, "diverged": diverge_at, "failed": 0}[status]
    lines, trace = [], ["step,epoch,loss,lr,step_size,adaptive_step,lb_estimate"]
    for epoch in range(1, n_epochs + 1):
        score = _score(score_kind, optimizer, lr, seed, epoch, epochs)
        loss = 2.0 * (1.0 - score) if score_kind.higher_is_better else score
        if status == "diverged" and epoch == n_epochs:
            loss, score = math.nan, score_kind.diverged
        row = {"epoch": epoch, "train/loss": loss, "train/score": score, "val/loss": loss * 1.1}
        row |= {"val/score": score, "lr": lr, "time_s": 0.1}
        row |= extra_metrics(score) if extra_metrics else {}
        lines.append(json.dumps({k: None if v != v else v for k, v in row.items()}))
        for i in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + i + 1
            t1 = 0.5 / (1 + 0.1 * step) if optimizer.startswith("momo") else ""
            size = min(lr, t1) if t1 != "" else lr
            trace.append(f"{step},{epoch},{loss},{lr},{size},{t1},")
    (path / "metrics.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    (path / "trace.csv").write_text("\n".join(trace) + "\n")
    run = {
        "run_id": run_id,
        "experiment": experiment,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "status": status,
        "epochs_done": n_epochs,
        "final": json.loads(lines[-1]) if lines else {},
        "score_name": score_kind.name,
        "higher_is_better": score_kind.higher_is_better,
        "wall_time_s": 1.0,
        "git_commit": "0" * 40,
        "versions": {},
        "device": {"type": "cpu"},
        "data": {"dataset": "fake", "synthetic": True, "n_train": 10, "n_val": 10},
        "profile": config["profile"]["name"],
        "error": "Traceback: boom" if status == "failed" else None,
        "finished_at": f"2026-01-01T00:00:{len(lines):02d}",
    }
    (path / "run.json").write_text(json.dumps(run))
    return path


def write_run(
    root: Path, experiment: str, optimizer: str, lr: float, seed: int, *, epochs: int = 3,
    status: str = "completed", kind: str = "acc", settings: dict | None = None, **record,
) -> Path:  # fmt: skip
    """One record of a toy config (run_config) with `settings` as dotted overrides."""
    config = run_config(experiment, optimizer, lr, seed, epochs=epochs, **(settings or {}))
    return write_record(root, config, status=status, kind=kind, **record)


def write_sweep(
    root: Path,
    experiment: str = "fake_exp",
    grids: dict[str, list[float]] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    *,
    kind: str = "acc",
    diverged: frozenset = frozenset(),
    failed: frozenset = frozenset(),
    settings: Callable[[str, float], list[dict]] | None = None,
    **record,
) -> list[dict]:
    """A whole sweep of fake runs; returns the configs written (the sweep's expected runs).

    `diverged` holds (optimizer, lr) for every seed or (optimizer, lr, seed) for one; `failed` holds
    (optimizer, lr, seed). `settings(optimizer, lr)` lists the variant settings of each (optimizer, lr),
    each a dict of dotted overrides (default: one setting without overrides).
    """
    grids = grids or {"momo": [1e-3, 1e-2, 1e-1, 1.0, 10.0], "adam": [1e-4, 1e-3, 1e-2, 1e-1]}
    configs = []
    for optimizer, lrs in grids.items():
        for lr in lrs:
            for setting in settings(optimizer, lr) if settings else [{}]:
                for seed in seeds:
                    status = "completed"
                    if (optimizer, lr) in diverged or (optimizer, lr, seed) in diverged:
                        status = "diverged"
                    elif (optimizer, lr, seed) in failed:
                        status = "failed"
                    config = run_config(experiment, optimizer, lr, seed, **setting)
                    write_record(root, config, status=status, kind=kind, **record)
                    configs.append(config)
    return configs


def expected(configs: list[dict]) -> list[ExpectedRun]:
    """The configs of a fake sweep as the selection's expected runs (what sweep_protocol composes)."""
    return [ExpectedRun((f"seed={c['seed']}",), scientific(c)) for c in configs]


SCORES = {
    "acc": Score(label="val accuracy (%)", scale=100.0, tolerances=[1.0, 5.0], ylim=[0.0, 100.0]),
    "auc": Score(label="val AUC (×100)", scale=100.0, tolerances=[0.5, 1.0]),
    "bleu": Score(label="val BLEU", scale=1.0, tolerances=[1.0, 5.0], unit="BLEU"),
    "mse": Score(
        label="val MSE", higher_is_better=False, scale=1.0, log=True, tolerance="relative",
        tolerances=[1.0, 9.0], unit="×",
    ),
}  # fmt: skip


def figure_spec(
    methods: list[str], *, kind: str = "acc", experiment: str = "e", **fields
) -> FigureSpec:
    """The figure spec of a fake experiment: `kind`'s score, the other fields as given."""
    variants = [Variant(**v) for v in fields.pop("variants", [])]
    extras = fields.pop("extras", None)
    return FigureSpec(
        experiment=experiment, title=f"fake {kind}", methods=methods, score=copy.deepcopy(SCORES[kind]),
        variants=variants, extras=Extras(methods=extras) if extras else None, **fields,
    )  # fmt: skip


def composed_configs(experiment: str, overrides: list[str], sweep_file: Path) -> list[dict]:
    """The resolved config of every run of a sweep file, composed by Hydra as the runner does."""
    runs = expected_runs(experiment, load_sweep(experiment, sweep_file), overrides)
    with initialize_config_dir(config_dir=str(layout.CONFIG_DIR), version_base="1.3"):
        return [
            OmegaConf.to_container(compose("train", overrides=list(run)), resolve=True)
            for run in runs
        ]
