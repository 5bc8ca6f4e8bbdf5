"""A sweep's run records -> the tables its figures are drawn from.

    python -m experiments.analysis.aggregate <experiment> [override ...] [--results-dir results] [--file sweep.yaml]

The overrides are those the sweep was run with (`make sweep ARGS="profile=smoke"`): together with
configs/sweep/<experiment>.yaml they say which runs make the figure (experiments.analysis.selection);
every other record is left out, and the reasons are printed. Writes, under the results directory:
- `<experiment>.csv` and `.parquet`: one row per selected run and epoch (experiments.analysis.runs);
- `<experiment>_summary.csv` and `_curves.csv`: the summary format (experiments.analysis.summary) of the
  figures of configs/figure/<experiment>.yaml, final epoch and every epoch;
- `<experiment>_robustness.csv`: the lr-band widths (experiments.analysis.robustness), also printed;
- `<experiment>_runs.csv`: every record and expected run: selected, left out (why) or missing;
- `<experiment>_trace.parquet`: the per-step traces of the selected runs, with the cap lr/rho_k.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments import layout
from experiments.analysis import robustness, style
from experiments.analysis.runs import build_table
from experiments.analysis.selection import Selection, select_sweep_runs
from experiments.analysis.spec import FigureSpec, load_spec
from experiments.analysis.summary import final, read_summary, summarise_runs

log = logging.getLogger(__name__)

RUNS_COLUMNS = ("run_id", "optimizer", "lr", "seed", "status", "selected", "reason", "path")


def runs_table(selection: Selection, results_dir: Path) -> pd.DataFrame:
    """Every record and expected run of the sweep: selected, left out (and why) or missing; a
    record's `path` is relative to the results directory."""
    rows = []
    for path, selected, reason in [(p, True, "") for p in selection.runs] + [
        (left.path, False, left.reason) for left in selection.left_out
    ]:
        info = json.loads((path / layout.RUN_INFO).read_text())
        where = Path(path).resolve().relative_to(Path(results_dir).resolve())
        rows.append(
            {k: info.get(k) for k in RUNS_COLUMNS[:5]}
            | {"selected": selected, "reason": reason, "path": str(where)}
        )
    for run in selection.missing:
        rows.append(
            {"optimizer": run.optimizer, "lr": run.lr, "seed": run.seed, "status": "missing"}
            | {"selected": False, "reason": " ".join(run.overrides)}
        )
    return pd.DataFrame(rows, columns=list(RUNS_COLUMNS)).fillna({"reason": ""})


def aggregate(
    experiment: str, results_dir: Path, selection: Selection, spec: FigureSpec
) -> dict[str, Path]:
    """Writes the tables of the selected runs of one experiment; returns their paths by kind."""
    table, trace = build_table(selection.runs)
    curves = summarise_runs(table, spec)
    summary = final(curves)
    files = layout.AggregatePaths(Path(results_dir), experiment)
    out = {
        "table": files.table,
        "parquet": files.parquet,
        "summary": files.summary,
        "curves": files.curves,
        "robustness": files.robustness,
        "runs": files.runs,
    }
    table.to_csv(out["table"], index=False)
    table.to_parquet(out["parquet"], index=False)
    summary.to_csv(out["summary"], index=False)
    curves.to_csv(out["curves"], index=False)
    robustness.widths(summary, spec).to_csv(out["robustness"], index=False)
    runs_table(selection, results_dir).to_csv(out["runs"], index=False)
    if not trace.empty:
        out["trace"] = files.trace
        trace.to_parquet(out["trace"], index=False)
    log.info("aggregated %d runs of %s", len(selection.runs), experiment)
    return out


def report_selection(selection: Selection) -> str:
    """What was aggregated, what was left out and why, what is missing: a few lines."""
    n = selection.status
    lines = [
        f"{selection.experiment}: {len(selection.runs)} of the sweep's {selection.expected} runs "
        f"aggregated ({n['completed']} completed, {n['diverged']} diverged), {n['failed']} failed, "
        f"{n['missing']} missing"
    ]
    lines += [f"  left out: {reason}" for reason in selection.reasons()]
    return "\n".join(lines)


def _fail(message: str) -> None:
    print(f"aggregate: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment")
    parser.add_argument("overrides", nargs="*", help="the overrides the sweep was run with")
    parser.add_argument("--results-dir", type=Path, help="default: results_dir= of the overrides")
    parser.add_argument("--file", type=Path, help="a sweep file other than configs/sweep/<id>.yaml")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("results_dir=")]
    results_dir = args.results_dir or Path(given[-1] if given else "results")
    experiment = args.experiment
    try:
        spec = load_spec(experiment)
        if not any(layout.record_dirs(results_dir, experiment)):
            _fail(
                f"no runs of {experiment} under {layout.runs_dir(results_dir, experiment)}: "
                f"make sweep EXPERIMENT={experiment} makes them"
            )
        selection = select_sweep_runs(experiment, results_dir, args.overrides, args.file)
        if not selection.runs:
            _fail(
                f"none of the records of {experiment} is a finished run of its sweep "
                f"({'; '.join(selection.reasons())}): give aggregate the overrides the sweep ran "
                f'with, make aggregate EXPERIMENT={experiment} ARGS="..."'
            )
        out = aggregate(experiment, results_dir, selection, spec)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    print(report_selection(selection))
    widths = robustness.widths(read_summary(out["summary"]), spec)
    print(
        "\nlr robustness: decades of lr within the tolerance of the best final score, on the lr "
        "range common to the methods compared (own grid in brackets); ≥: the band reaches the "
        f"range's end\n{robustness.markdown([(widths, spec)], style.label)}"
    )
    for kind, path in out.items():
        print(f"{kind:>10}: {path}")


if __name__ == "__main__":
    main()
