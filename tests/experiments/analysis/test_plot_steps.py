"""What the step-size figures draw, read from the artists: the effective step of every method against
its knob (lr_free's figure spec) and the step per iteration, against the records they come from."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fake_runs import composed_configs, write_record

from experiments import layout
from experiments.analysis import aggregate, plot_steps, style
from experiments.analysis.spec import load_spec
from experiments.analysis.summary import read_summary

# A tiny lr_free sweep: MoMo and Prodigy with a step-size diagnostic, SGD-M without one, Schedule-Free
# SGD from the extras figure.
TINY = """
experiment: lr_free
params:
  seed: [0, 1, 2]
optimizers:
  sgd_m:
    optimizer.lr: [0.01, 0.1]
  sf_sgd:
    optimizer.lr: [0.1, 1.0]
  prodigy:
    optimizer.lr: [0.1, 1.0, 10.0]
  momo:
    optimizer.lr: [0.1, 10.0]
"""
NO_DIAGNOSTIC = {"sgd_m"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _step(optimizer: str, lr: float, score: float) -> dict:
    """A made-up last-epoch step that differs by method, knob and seed (through the score)."""
    scale = {"momo": 0.5, "prodigy": 2.0, "sf_sgd": 1.0}[optimizer]
    return {"optim/step_size_median": scale * min(lr, 3.0) * score**4}


@pytest.fixture(scope="module")
def lr_free(tmp_path_factory) -> Path:
    """The tiny sweep's records (profile=smoke), aggregated as `make aggregate` does."""
    root = tmp_path_factory.mktemp("lr_free")
    (root / "tiny.yaml").write_text(TINY)
    for config in composed_configs("lr_free", ["profile=smoke"], root / "tiny.yaml"):
        name, lr = config["optimizer"]["name"], config["optimizer"]["lr"]
        extra = None if name in NO_DIAGNOSTIC else (lambda s, n=name, lr=lr: _step(n, lr, s))
        write_record(root, config, extra_metrics=extra)
    args = ["lr_free", "profile=smoke", "--file", str(root / "tiny.yaml")]
    aggregate.main([*args, "--results-dir", str(root)])
    return root


def _drawn(root: Path) -> dict[str, plt.Figure]:
    spec = load_spec("lr_free")
    files = layout.AggregatePaths(root, "lr_free")
    return plot_steps.diagnostic_figures(files, read_summary(files.summary), spec.all_methods())


def _records(root: Path) -> pd.DataFrame:
    """(optimizer, lr, seed, final step) of every record, straight from run.json."""
    rows = []
    for path in layout.record_dirs(root, "lr_free"):
        run = json.loads((path / "run.json").read_text())
        step = run["final"].get("optim/step_size_median", np.nan)
        rows.append(
            {"method": run["optimizer"], "lr": run["lr"], "seed": run["seed"], "step": step}
        )
    return pd.DataFrame(rows)


def _panels(fig: plt.Figure) -> dict[str, plt.Axes]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_effective_step_draws_a_panel_per_method_with_a_diagnostic_in_the_specs_order(lr_free):
    fig = _drawn(lr_free)["effective_step"]
    # the spec's figure first (MoMo before Prodigy), then its extras (SF-SGD); SGD-M has no diagnostic
    assert list(_panels(fig)) == [style.label(m) for m in ("momo", "prodigy", "sf_sgd")]


def test_effective_step_line_is_the_seeds_mean_and_the_band_one_std(lr_free):
    panels = _panels(_drawn(lr_free)["effective_step"])
    expected = _records(lr_free).groupby(["method", "lr"])["step"].agg(["mean", "std"])
    for method in ("momo", "prodigy", "sf_sgd"):
        ax = panels[style.label(method)]
        (line,) = [x for x in ax.get_lines() if x.get_label() == method]
        want = expected.loc[method].sort_index()
        assert line.get_xdata().tolist() == want.index.tolist()
        np.testing.assert_allclose(line.get_ydata(), want["mean"], rtol=1e-12)
        assert want["std"].gt(0).all()  # the seeds differ, so the band has a height
        (band,) = [c for c in ax.collections if c.get_label() == f"band {method}"]
        vertices = np.concatenate([p.vertices for p in band.get_paths()])
        for lr, row in want.iterrows():
            at = vertices[np.isclose(vertices[:, 0], lr)][:, 1]
            low = max(row["mean"] - row["std"], 0.1 * want["mean"].min())
            assert at.min() == pytest.approx(low) and at.max() == pytest.approx(
                row["mean"] + row["std"]
            )
        (knob,) = [x for x in ax.get_lines() if x.get_label() == "the knob"]
        assert knob.get_xdata().tolist() == knob.get_ydata().tolist() == want.index.tolist()
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")


def test_effective_step_trace_draws_one_seed_per_knob_value(lr_free):
    panels = _panels(_drawn(lr_free)["effective_step_trace"])
    trace = pd.read_parquet(layout.AggregatePaths(lr_free, "lr_free").trace)
    ax = panels["Prodigy"]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["0.1", "1", "10"]
    for line, lr in zip(lines, (0.1, 1.0, 10.0), strict=True):
        run = trace[(trace["method"] == "prodigy") & (trace["lr"] == lr) & (trace["seed"] == 0)]
        run = run.sort_values("step")
        assert line.get_xdata().tolist() == run["step"].tolist()
        assert line.get_ydata().tolist() == run["step_size"].tolist()
