"""`make paper-figures`: the paper's six record-backed figures and the width table, from the records."""

import pytest

from experiments.analysis.paper_figures import main, paper_curves, paper_specs, width_table
from experiments.analysis.summary import final
from experiments.layout import REPO_ROOT
from experiments.runner.sweep import load_sweep

BEGIN, END = "<!-- paper-widths:begin -->", "<!-- paper-widths:end -->"


def test_paper_specs_are_the_six_record_backed_figures():
    assert [spec.experiment for spec in paper_specs()] == [
        "cifar100_resnet110", "cifar10_resnet20", "cifar10_vgg16", "cifar10_vit",
        "imagenet32_resnet18", "mnist_mlp",
    ]  # fmt: skip
    assert all(spec.band == 1.0 for spec in paper_specs())


def test_width_table_of_the_records_is_the_readme_table():
    readme = (REPO_ROOT / "README.md").read_text()
    shown = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip()
    assert shown == width_table().strip()


@pytest.mark.slow
def test_paper_figures_cli_draws_every_figure_and_prints_the_table(tmp_path, capsys):
    main(["--plots-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for spec in paper_specs():
        for name in ("robustness", "training_curves"):
            assert (tmp_path / spec.experiment / f"{name}.png").stat().st_size > 10_000
    assert (tmp_path / "cifar10_resnet20" / "robustness_extras.png").is_file()  # Prox-SPS
    assert "| mnist_mlp | MoMo |  | 97.97 ± 0.08 (1) | ≥ 3.0 (≥ 4.0) |" in out


def test_paper_sweep_grids_are_the_records_grids():
    # Our sweeps of the record-backed figures run the lrs the authors ran, method by method (the
    # CIFAR100 MoMo-Adam grid used to lack lr 100).
    for spec in paper_specs():
        ran = final(paper_curves(spec)).groupby("method")["lr"].apply(lambda s: sorted(set(s)))
        sweep: dict[str, set[float]] = {}
        for block in load_sweep(spec.experiment):
            sweep.setdefault(block.optimizer, set()).update(block.params["optimizer.lr"])
        for optimizer, lrs in sweep.items():
            assert sorted(lrs) == pytest.approx(ran[optimizer]), (spec.experiment, optimizer)
