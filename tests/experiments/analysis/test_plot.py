"""Every figure from the aggregated tables alone (the run directories are deleted first)."""

import shutil
from pathlib import Path

import pytest
from fake_runs import write_sweep

from experiments.analysis.aggregate import aggregate
from experiments.analysis.plot import main, plot_fig1

PAPER = Path(__file__).resolve().parents[3] / "results" / "paper"


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000


@pytest.fixture
def aggregated(tmp_path):
    # Named like a paper experiment so that its recorded curve is overlaid.
    write_sweep(
        tmp_path,
        "mnist_mlp",
        grids={"momo": [1e-2, 1.0, 100.0], "sgd_m": [1e-2, 1e-1]},
        seeds=(0, 1),
        diverged={("momo", 100.0)},
    )
    (tmp_path / "paper").mkdir()
    shutil.copy(PAPER / "mnist_mlp.csv", tmp_path / "paper")
    aggregate("mnist_mlp", tmp_path)
    shutil.rmtree(tmp_path / "runs")  # a plot never reads a run directory
    return tmp_path


def test_plot_writes_each_figure_as_png_and_pdf(aggregated, tmp_path):
    plots = tmp_path / "plots"
    main(["mnist_mlp", "--results-dir", str(aggregated), "--plots-dir", str(plots)])
    for name in ("robustness", "training_curves", "step_sizes_momo"):
        for suffix in (".png", ".pdf"):
            assert _nonempty(plots / "mnist_mlp" / f"{name}{suffix}"), name
    # SGD-M has no adaptive step, so no step-size figure.
    assert not (plots / "mnist_mlp" / "step_sizes_sgd_m.png").exists()


def test_plot_best_score_table_markdown_and_latex(aggregated, tmp_path):
    plots = tmp_path / "plots"
    main(["mnist_mlp", "--results-dir", str(aggregated), "--plots-dir", str(plots)])
    markdown = (plots / "best_scores.md").read_text()
    assert "| mnist_mlp |" in markdown and "MoMo" in markdown and "SGD-M" in markdown
    assert "±" in markdown
    assert "\\begin{tabular}" in (plots / "best_scores.tex").read_text()


def test_plot_fig1_needs_no_results(tmp_path):
    written = plot_fig1(tmp_path / "fig1")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert all(_nonempty(p) for p in written)
