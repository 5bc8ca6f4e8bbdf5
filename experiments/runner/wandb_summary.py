"""A sweep's summary on Weights & Biases: after `make aggregate` and `make plot`, the figures and tables of
an experiment as one run named `<experiment> summary` (job type `summary`) in the sweep's group, so that
the dashboard shows the paper's figure beside the sweep's runs.

    python -m experiments.runner.wandb_summary <experiment> [--file sweep.yaml] [--plots-dir plots]
        [override ...]                                # `make wandb-summary EXPERIMENT=... ARGS=...`

The overrides are the sweep's (e.g. profile=smoke, results_dir=...): with the sweep file they give the
sweep's id, hence the group (`logger.group=...` sets another), and they may set the W&B project, entity
or mode (`logger.project=...`; configs/logger/wandb.yaml). Logged: every PNG under `<plots-dir>/<experiment>/` as
an image `figures/<name>`, and every CSV table of experiments.layout.AggregatePaths that exists (the
summary, the robustness widths, ...; not the per-epoch table of every run) as a W&B table
`tables/<name>`. The summary run's id is `<sweep id>-summary`: a rerun updates the same run.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir

from experiments.layout import CONFIG_DIR, AggregatePaths
from experiments.runner import errors, identity, loggers, sweep

log = logging.getLogger(__name__)

NOT_LOGGED = (
    "table",
    "paper",
)  # every run's every epoch (large); the paper's record, not this sweep's


def summary_tables(results_dir: Path, experiment: str) -> list[Path]:
    """The aggregate CSV tables of the experiment that exist, as experiments.layout names them."""
    files = AggregatePaths(Path(results_dir), experiment)
    names = [n for n, v in vars(AggregatePaths).items() if isinstance(v, property)]
    paths = [getattr(files, n) for n in names if n not in NOT_LOGGED]
    return [p for p in paths if p.suffix == ".csv" and p.is_file()]


def figures(plots_dir: Path, experiment: str) -> list[Path]:
    return sorted((Path(plots_dir) / experiment).glob("*.png"))


def log_summary(
    experiment: str,
    overrides: Sequence[str] = (),
    sweep_file: Path | None = None,
    plots_dir: Path = Path("plots"),
) -> str:
    """Logs the experiment's figures and tables as the sweep's summary run; returns the W&B run's id."""
    import pandas as pd
    import wandb

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "logger=wandb", *overrides])
    images, tables = figures(plots_dir, experiment), summary_tables(cfg.results_dir, experiment)
    if not images and not tables:
        raise FileNotFoundError(
            f"No figures under {Path(plots_dir) / experiment} and no tables of {experiment} in "
            f"{cfg.results_dir}: run `make aggregate plot EXPERIMENT={experiment}` first"
        )
    blocks = sweep.load_sweep(experiment, sweep_file)
    paths = sweep.expected_paths(experiment, blocks, overrides)
    name = identity.sweep_id(experiment, (p.run_id for p in paths))
    found = sweep.status_of(paths)
    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=loggers.wandb_mode(cfg.logger.mode),
        id=f"{name}-summary",
        resume="allow",
        group=cfg.logger.get("group") or name,
        job_type="summary",
        name=f"{experiment} summary",
        tags=[experiment, f"profile:{cfg.profile.name}", "summary"],
        config={
            "experiment": experiment,
            "sweep_id": name,
            "runs": {status: len(found.get(status, [])) for status in sweep.STATUSES},
        },
    )
    with run:
        logged = {f"figures/{p.stem}": wandb.Image(str(p)) for p in images}
        for path in tables:
            logged[f"tables/{path.stem.removeprefix(experiment + '_')}"] = wandb.Table(
                dataframe=pd.read_csv(path)
            )
        run.log(logged)
        log.info(
            "W&B summary run %s (group %s): %d figures, %d tables",
            run.id,
            run.group,
            len(images),
            len(tables),
        )
        return run.id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment", help="a file of configs/sweep/")
    parser.add_argument("overrides", nargs="*", help="the sweep's Hydra overrides")
    parser.add_argument("--file", type=Path, help="a sweep file other than configs/sweep/<id>.yaml")
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"))
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with errors.input_errors_as_one_line():
        log_summary(args.experiment, args.overrides, args.file, args.plots_dir)


if __name__ == "__main__":
    main()
