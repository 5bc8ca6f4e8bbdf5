"""A paper figure's sweep from `configs/sweep/<experiment>.yaml`: one Hydra multirun per optimizer block.

    python -m experiments.runner.sweep <experiment> [--launcher local|parallel|slurm] [override ...]
    python -m experiments.runner.sweep <experiment> --status [override ...]
    python -m experiments.runner.sweep <experiment> --dry-run            # print the Hydra commands

The learning-rate grids differ per optimizer, so a sweep is a union of cartesian products, which Hydra's
basic sweeper cannot express in one multirun. The sweep file lists the blocks; each becomes

    python -m experiments.train -m experiment=<id> optimizer=<name> optimizer.lr=<a>,<b>,... seed=0,1,2

which is exactly what a user would type, so the runner's resumability (a finished record returns at once,
a partial one resumes from its checkpoint) makes the whole sweep resumable. Extra overrides (profile=smoke,
results_dir=..., hydra.launcher.n_jobs=4) go to every block.
"""

from __future__ import annotations

import argparse
import collections
import logging
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments.layout import CONFIG_DIR
from experiments.runner import records

log = logging.getLogger(__name__)

LAUNCHERS = {"local": None, "parallel": "parallel", "slurm": "slurm"}


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


def sweep_status(
    experiment: str, blocks: Sequence[Block], extra: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Each expected run's record status (completed, diverged, failed, missing) -> its run ids.

    The config of every expected run is composed as `experiments.train` would, and its run id is the
    runner's own (experiments.runner.records.run_id), so the check cannot drift from what the runner writes.
    """
    found: dict[str, list[str]] = collections.defaultdict(list)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides in expected_runs(experiment, blocks, extra):
            paths = records.run_paths(compose("train", overrides=overrides))
            info = records.read_info(paths)
            found["missing" if info is None else info["status"]].append(paths.run_id)
    return dict(found)


def run_sweep(
    experiment: str,
    launcher: str = "local",
    extra: Sequence[str] = (),
    only: Sequence[str] = (),
    dry_run: bool = False,
    sweep_file: Path | None = None,
) -> int:
    """Runs every block's multirun in turn; returns the number of blocks whose command failed."""
    failures = 0
    for block in load_sweep(experiment, sweep_file):
        if only and block.optimizer not in only:
            continue
        command = multirun_command(experiment, block, launcher, extra)
        log.info("$ %s", shlex.join(command[1:]))
        if not dry_run and subprocess.run(command, check=False).returncode != 0:
            log.error("the %s block of %s failed", block.optimizer, experiment)
            failures += 1
    return failures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment", help="a file of configs/sweep/")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS))
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=(),
        help="comma-separated optimizer blocks to run (default: all)",
    )
    parser.add_argument("--file", type=Path, help="a sweep file other than configs/sweep/<id>.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--status", action="store_true", help="count the sweep's records, run nothing"
    )
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.status:
        blocks = load_sweep(args.experiment, args.file)
        found = sweep_status(args.experiment, blocks, args.overrides)
        total = sum(map(len, found.values()))
        counts = "  ".join(
            f"{s} {len(found.get(s, []))}" for s in ("completed", "diverged", "failed", "missing")
        )
        print(f"{args.experiment}: {total} runs expected  {counts}")
        sys.exit(0)
    failures = run_sweep(
        args.experiment, args.launcher, args.overrides, args.only, args.dry_run, args.file
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
