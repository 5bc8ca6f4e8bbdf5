"""The paper's figures drawn from the paper's own records, through the same summary and plotting code.

    python -m experiments.analysis.paper_figures [--results-dir results] [--plots-dir plots/paper]

Every figure spec with a paper record (configs/figure/*.yaml with `paper:`; the records are
results/paper/<record>.csv, see its README) is summarised by experiments.analysis.summary.summarise_paper
and drawn by experiments.analysis.plot exactly as our own runs are: `<plots>/<experiment>/robustness.png`,
`training_curves.png` (and `_extras` where the spec has extras the records hold). Prints the width table
of the paper's figures (experiments.analysis.robustness), the one README.md shows.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments import layout
from experiments.analysis import robustness, style
from experiments.analysis.plot import figures
from experiments.analysis.spec import FIGURE_DIR, FigureSpec, load_spec
from experiments.analysis.summary import final, summarise_paper

log = logging.getLogger(__name__)


def paper_specs() -> list[FigureSpec]:
    """The figure specs that name a paper record, sorted by experiment."""
    specs = [load_spec(path) for path in sorted(FIGURE_DIR.glob("*.yaml"))]
    return [spec for spec in specs if spec.paper is not None]


def paper_curves(spec: FigureSpec, results_dir: Path = Path("results")) -> pd.DataFrame:
    """The summary (every epoch) of the spec's figures from the paper's record alone."""
    path = layout.AggregatePaths(Path(results_dir), spec.paper.record).paper
    return summarise_paper(pd.read_csv(path), spec)


def width_table(results_dir: Path = Path("results")) -> str:
    """The widths of the paper's figures (their methods, not the extras) as one markdown table."""
    tables = []
    for spec in paper_specs():
        summary = final(paper_curves(spec, results_dir))
        widths = robustness.widths(summary[summary["figure"] == spec.experiment], spec)
        tables.append((widths, spec))
    return robustness.markdown(tables, style.label)


def draw(results_dir: Path, plots_dir: Path) -> list[Path]:
    """Every paper figure from the records; returns the PNGs written."""
    written = []
    for spec in paper_specs():
        curves = paper_curves(spec, results_dir)
        for name, fig in figures(spec, final(curves), curves).items():
            written += style.save(fig, plots_dir / spec.experiment / name, formats=("png",))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots") / "paper")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in draw(args.results_dir, args.plots_dir):
        print(path)
    print(
        "\nlr robustness in the paper's records: decades of lr within the tolerance of the best final"
        " score, on the lr range common to the methods compared (own grid in brackets); ≥: the band"
        " reaches the range's end\n"
    )
    print(width_table(args.results_dir))


if __name__ == "__main__":
    main()
