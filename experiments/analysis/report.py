"""One self-contained HTML page per experiment: browse a sweep's results without any service.

    python -m experiments.analysis.report <experiment> [--results-dir results] [--plots-dir plots]

Reads the aggregated tables of `make aggregate` (never a run directory) and writes
`<plots>/<experiment>/report.html`: the figures (embedded as PNG data, so the page is one file), the width
table, the best score of each method, and every run of the sweep with its status, whether the figure
uses it (and why not), and a link to its record directory (relative, so the page works where the
results are).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments import layout
from experiments.analysis import plot_steps, robustness, style
from experiments.analysis.plot import figures, paper_summary
from experiments.analysis.spec import FigureSpec, load_spec
from experiments.analysis.summary import best, read_summary

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
th { background: #f4f4f4; }
img { max-width: 100%; }
.completed { color: #1a7f37; } .diverged { color: #b35900; } .failed, .missing { color: #c62828; }
.left-out { color: #777; }
"""


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> str:
    """An HTML table of already-escaped cells; `classes`: one CSS class per row (or None)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _best_rows(summary: pd.DataFrame, spec: FigureSpec) -> list[list[str]]:
    rows = []
    for _, r in best(summary, spec).iterrows():
        score = spec.score_text(r["score_mean"], r["score_std"])
        cells = [r["figure"], style.label(r["method"]), r["variant"], f"{r['lr']:g}", score]
        rows.append(
            [html.escape(str(c)) for c in [*cells, int(r["n_seeds"]), int(r["n_diverged"])]]
        )
    return rows


def _run_rows(runs: pd.DataFrame, results_dir: Path, page_dir: Path) -> tuple[list, list]:
    rows, classes = [], []
    for r in runs.itertuples():
        if isinstance(r.path, str) and r.path:
            target = os.path.relpath(Path(results_dir) / r.path, page_dir)
            run = f'<a href="{html.escape(target)}/">{html.escape(str(r.run_id))}</a>'
        else:
            run = "–"
        used = "yes" if r.selected else "no"
        seed = "" if pd.isna(r.seed) else str(int(r.seed))
        cells = [run, html.escape(style.label(r.optimizer)), f"{r.lr:g}", seed]
        cells += [f'<span class="{html.escape(r.status)}">{html.escape(r.status)}</span>', used]
        rows.append([*cells, html.escape(str(r.reason))])
        classes.append("" if r.selected else "left-out")
    return rows, classes


def render(experiment: str, results_dir: Path, page_dir: Path) -> str:
    """The report page of one experiment as HTML text."""
    spec = load_spec(experiment)
    files = layout.AggregatePaths(Path(results_dir), experiment)
    if not files.summary.is_file():
        raise FileNotFoundError(
            f"no aggregated runs of {experiment} ({files.summary} is missing): "
            f"make aggregate EXPERIMENT={experiment} writes it"
        )
    summary, curves = read_summary(files.summary), read_summary(files.curves)
    runs = pd.read_csv(files.runs, keep_default_na=False, na_values={"lr": [""], "seed": [""]})
    runs["selected"] = runs["selected"].astype(str) == "True"
    drawn = figures(spec, summary, curves, paper_summary(spec, results_dir))
    drawn |= plot_steps.diagnostic_figures(files, summary)
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption>{name}</figcaption></figure>"
        for name, fig in drawn.items()
    )
    widths = robustness.widths(summary, spec)
    tols = [robustness.tolerance_text(t, spec) for t in spec.score.tolerances]
    width_header = ["figure", "method", "variant", "best final score (lr)", *tols, "lr range"]
    width_rows = [
        [html.escape(c) for c in row] for row in robustness.width_rows(widths, spec, style.label)
    ]
    run_rows, classes = _run_rows(runs, results_dir, page_dir)
    counts = runs["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    used = int(runs["selected"].sum())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(spec.title)}: {experiment}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(spec.title)} <small>({experiment})</small></h1>
<p>{used} runs drawn; records and expected runs: {html.escape(status)}.
Band: mean ± {spec.band:g} std over seeds; score: {html.escape(spec.score.label)}
({"higher" if spec.score.higher_is_better else "lower"} is better).</p>
<h2>Figures</h2>
{images}
<h2>Robustness to the learning rate</h2>
<p>Decades of lr within the tolerance of the best final score, on the lr range common to the methods
compared (on the method's own grid in brackets); ≥: the band reaches the end of the range.</p>
{_table(width_header, width_rows)}
<h2>Best final score</h2>
{_table(["figure", "method", "variant", "lr", "score", "seeds", "diverged"], _best_rows(summary, spec))}
<h2>Runs</h2>
{_table(["run", "optimizer", "lr", "seed", "status", "drawn", "why not / overrides"], run_rows, classes)}
</body></html>
"""


def write_report(experiment: str, results_dir: Path, plots_dir: Path) -> Path:
    page = Path(plots_dir) / experiment / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(experiment, Path(results_dir), page.parent))
    return page


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiment")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"))
    args = parser.parse_args(argv)
    try:
        print(write_report(args.experiment, args.results_dir, args.plots_dir))
    except (FileNotFoundError, ValueError) as error:
        print(f"report: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
