"""What the figures draw, read from the matplotlib artists: lines, bands, crosses, legends, axes."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fake_runs import figure_spec, write_sweep

from experiments import layout
from experiments.analysis.plot import draw_curves, draw_robustness, pick_curves
from experiments.analysis.runs import build_table
from experiments.analysis.spec import load_spec
from experiments.analysis.summary import final, summarise_paper, summarise_runs

PAPER = Path(__file__).resolve().parents[3] / "results" / "paper"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _curves(root: Path, spec, experiment: str = "e") -> pd.DataFrame:
    return summarise_runs(build_table(layout.record_dirs(root, experiment))[0], spec)


def _line(ax, method: str, line: str = ""):
    (found,) = [x for x in ax.get_lines() if x.get_label() == f"{method}|{line}"]
    return found


def _band_at(ax, method: str, lr: float, line: str = "") -> tuple[float, float]:
    """The (low, high) of a method's band at one lr, from the fill_between polygon."""
    (band,) = [c for c in ax.collections if c.get_label() == f"band {method}|{line}"]
    vertices = np.concatenate([p.vertices for p in band.get_paths()])
    at = vertices[np.isclose(vertices[:, 0], lr)][:, 1]
    return float(at.min()), float(at.max())


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def _paper(experiment: str):
    spec = load_spec(experiment)
    curves = summarise_paper(pd.read_csv(PAPER / f"{spec.paper.record}.csv"), spec)
    return spec, final(curves), curves


def test_draw_robustness_lines_are_the_summary_and_the_band_is_one_std(tmp_path):
    spec = figure_spec(["momo", "adam"])
    write_sweep(tmp_path, "e", grids={"momo": [0.1, 1.0, 10.0], "adam": [1e-3, 1e-2]})
    summary = final(_curves(tmp_path, spec))
    fig = draw_robustness(summary, spec, "e")
    loss_ax, score_ax = fig.axes[:2]
    momo = summary[summary["method"] == "momo"].sort_values("lr")
    assert _line(score_ax, "momo").get_xdata().tolist() == momo["lr"].tolist()
    assert _line(score_ax, "momo").get_ydata() == pytest.approx(100 * momo["score_mean"])
    assert _line(loss_ax, "momo").get_ydata() == pytest.approx(momo["train_loss_mean"])
    row = momo[momo["lr"] == 1.0].iloc[0]
    low, high = _band_at(score_ax, "momo", 1.0)
    assert high - low == pytest.approx(2 * 100 * row["score_std"])  # mean ± 1 std
    assert (low + high) / 2 == pytest.approx(100 * row["score_mean"])
    assert score_ax.get_xscale() == "log" and loss_ax.get_yscale() == "log"
    assert score_ax.get_ylim() == (0.0, 100.0)  # the spec's limits


def test_draw_robustness_shows_the_papers_methods_and_extras_apart(tmp_path):
    spec = figure_spec(["momo", "sgd_m"], extras=["momo_star", "momo"])
    grids = {"momo": [0.1, 1.0], "sgd_m": [0.1, 1.0], "momo_star": [0.1, 1.0]}
    write_sweep(tmp_path, "e", grids=grids, seeds=(0, 1))
    summary = final(_curves(tmp_path, spec))
    assert _legend(draw_robustness(summary, spec, "e")) == ["MoMo", "SGD-M"]
    extras = draw_robustness(summary, spec, "e_extras")
    assert _legend(extras) == ["MoMo*", "MoMo"]
    assert "MoMo* beside" not in extras.get_suptitle() and "fake acc" in extras.get_suptitle()


def test_draw_robustness_marks_partly_diverged_seeds(tmp_path):
    spec = figure_spec(["sgd_m"])
    write_sweep(tmp_path, "e", grids={"sgd_m": [0.1, 1.0, 10.0]}, diverged={("sgd_m", 10.0, 2)})
    summary = final(_curves(tmp_path, spec))
    fig = draw_robustness(summary, spec, "e")
    loss_ax, score_ax = fig.axes[:2]
    row = summary[summary["lr"] == 10.0].iloc[0]
    # The score's mean counts the diverged seed: the point is drawn, with a cross and "1/3" on it.
    assert [t.get_text() for t in score_ax.texts] == ["1/3"]
    (cross,) = [x for x in score_ax.get_lines() if x.get_marker() == "x"]
    assert cross.get_ydata()[0] == pytest.approx(100 * row["score_mean"])
    # The training loss has no mean (NaN seed): the cross sits on the top edge, the worst loss.
    (cross,) = [x for x in loss_ax.get_lines() if x.get_marker() == "x"]
    assert cross.get_ydata()[0] == pytest.approx(loss_ax.get_ylim()[1])
    assert "k/n seeds diverged" in _legend(fig)


def test_draw_robustness_mse_log_axis_no_band_below_zero_diverged_at_the_top(tmp_path):
    spec = figure_spec(["momo"], kind="mse")
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    write_sweep(tmp_path, "e", grids={"momo": lrs}, kind="mse", diverged={("momo", 10.0)})
    summary = final(_curves(tmp_path, spec))
    score_ax = draw_robustness(summary, spec, "e").axes[1]
    assert score_ax.get_yscale() == "log"
    for lr in lrs[:-1]:
        low, _ = _band_at(score_ax, "momo", lr)
        assert low > 0
    (cross,) = [x for x in score_ax.get_lines() if x.get_marker() == "x"]
    assert cross.get_ydata()[0] == pytest.approx(score_ax.get_ylim()[1])  # the worst MSE: the top


def test_pick_curves_follows_the_scores_direction(tmp_path):
    for kind, best in (("mse", [0.1, 1.0]), ("acc", [0.1, 1.0])):
        spec = figure_spec(["momo"], kind=kind, curves=2)
        root = tmp_path / kind
        write_sweep(root, "e", grids={"momo": [1e-3, 0.1, 1.0, 100.0, 1000.0]}, kind=kind)
        curves = _curves(root, spec)
        assert sorted(pick_curves(final(curves), spec, 2)["lr"]) == best
        ax = draw_curves(curves, spec, "e").axes[0]
        assert sorted(line.get_label() for line in ax.get_lines()) == ["lr 0.1", "lr 1"]
        assert ax.get_yscale() == ("log" if kind == "mse" else "linear")


def test_draw_curves_band_never_below_zero():
    spec, _, curves = _paper("cifar100_resnet110")
    ax = draw_curves(curves, spec, "cifar100_resnet110").axes[0]
    for band in ax.collections:
        assert min(p.vertices[:, 1].min() for p in band.get_paths()) >= 0.0


def test_paper_records_drawn_through_the_pipeline_pass_through_the_record_values():
    spec, summary, _ = _paper("cifar10_vit")
    score_ax = draw_robustness(summary, spec, "cifar10_vit").axes[1]
    sgd = _line(score_ax, "sgd_m")
    at = dict(zip(sgd.get_xdata(), sgd.get_ydata(), strict=True))
    assert at[1.0] == pytest.approx(57.9033, abs=1e-3)  # val 0.579 ± 0.415
    low, high = _band_at(score_ax, "sgd_m", 1.0)
    assert (low, high) == pytest.approx((57.9033 - 41.4879, 57.9033 + 41.4879), abs=1e-3)
    spec, summary, _ = _paper("cifar100_resnet110")
    score_ax = draw_robustness(summary, spec, "cifar100_resnet110").axes[1]
    momo = _line(score_ax, "momo")
    assert dict(zip(momo.get_xdata(), momo.get_ydata(), strict=True))[100.0] == pytest.approx(21.19)
    low, _ = _band_at(score_ax, "momo", 100.0)  # 21.2 ± 34.9: the band stops at zero
    assert low == 0.0
    spec, summary, _ = _paper("mnist_mlp")
    fig = draw_robustness(summary, spec, "mnist_mlp")
    momo = _line(fig.axes[1], "momo")
    assert dict(zip(momo.get_xdata(), momo.get_ydata(), strict=True))[1.0] == pytest.approx(97.97)
    assert _legend(fig) == ["MoMo", "MoMo-Adam", "SGD-M", "Adam", "k/n seeds diverged"]


def test_paper_imagenet32_panels_per_weight_decay_lines_per_lower_bound():
    spec, summary, _ = _paper("imagenet32_resnet18")
    fig = draw_robustness(summary, spec, "imagenet32_resnet18")
    loss0, loss1, score0, _ = fig.axes[:4]
    assert [loss0.get_title(), loss1.get_title()] == ["λ = 0", "λ = 0.0001"]
    assert _line(score0, "momo", "0").get_linestyle() == "-"
    assert _line(score0, "momo", "0.9").get_linestyle() == "--"
    record = summary[(summary["method"] == "momo") & (summary["panel"] == "0")]
    record = record[(record["line"] == "0.9") & (record["lr"] == 0.1)]
    at = dict(zip(*_line(score0, "momo", "0.9").get_data(), strict=True))
    assert at[0.1] == pytest.approx(100 * record["score_mean"].iloc[0])  # 48.71
    legend = _legend(fig)
    assert legend[:6] == ["MoMo", "MoMo-Adam", "MoMo*", "MoMo-Adam*", "SGD-M", "AdamW"]
    assert "lb = 0" in legend and "lb = 0.9" in legend


def test_draw_robustness_overlays_the_paper_record_as_open_markers(tmp_path):
    spec = load_spec("mnist_mlp")
    write_sweep(tmp_path, "mnist_mlp", grids={"momo": [0.1, 1.0], "sgd_m": [0.1]}, seeds=(0, 1))
    summary = final(_curves(tmp_path, spec, "mnist_mlp"))
    _, paper, _ = _paper("mnist_mlp")
    fig = draw_robustness(summary, spec, "mnist_mlp", paper)
    (ref,) = [x for x in fig.axes[1].get_lines() if x.get_label() == "paper momo|"]
    assert ref.get_linestyle() == "None" and ref.get_markerfacecolor() == "none"
    record = paper[paper["method"] == "momo"].sort_values("lr")
    assert ref.get_ydata() == pytest.approx(100 * record["score_mean"])
    assert "paper record" in _legend(fig)
