"""A sweep's aggregate takes exactly the runs of its protocol and says what it left out and why."""

import json
from pathlib import Path

import pytest
from fake_runs import expected, run_config, write_record, write_sweep
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import layout
from experiments.analysis.selection import scientific, select, select_sweep_runs, sweep_protocol

GRIDS = {"momo": [0.1, 1.0], "sgd_m": [0.1]}


@pytest.fixture
def sweep(tmp_path):
    configs = write_sweep(tmp_path, "e", grids=GRIDS, seeds=(0, 1))
    return tmp_path, configs


def _select(root: Path, configs: list[dict]):
    return select(layout.record_dirs(root, "e"), expected(configs), "e")


def test_select_takes_every_run_of_the_protocol(sweep):
    root, configs = sweep
    selection = _select(root, configs)
    assert len(selection.runs) == 6 and selection.expected == 6
    assert selection.left_out == [] and selection.missing == [] and selection.reasons() == []


def test_select_leaves_out_quick_runs_with_the_reason(sweep):
    root, configs = sweep
    for seed in (0, 1):  # a quick check with epochs=2 next to the 3-epoch protocol
        write_record(root, run_config("e", "momo", 0.1, seed, epochs=2))
    selection = _select(root, configs)
    assert len(selection.runs) == 6
    assert selection.reasons() == ["2 runs with epochs=2 (the sweep's protocol: 3)"]
    assert {left.status for left in selection.left_out} == {"completed"}


def test_select_ignores_logger_device_and_paths_and_counts_a_run_once(sweep):
    root, configs = sweep
    # The same scientific run, logged to W&B on a GPU with its results elsewhere: a second copy of
    # momo lr 0.1 seed 0, not a different setting.
    wandb = {"_target_": "experiments.runner.loggers.WandbLogger", "project": "momo"}
    write_record(
        root,
        run_config("e", "momo", 0.1, 0, logger=wandb, device="cuda", results_dir="/elsewhere"),
    )
    selection = _select(root, configs)
    assert len(selection.runs) == 6
    assert selection.reasons() == ["1 run repeating a run already counted"]


def test_select_compares_numbers_by_value(tmp_path):
    configs = [run_config("e", "momo", 1, 0)]  # the sweep says lr 1 (an int)
    write_record(tmp_path, run_config("e", "momo", 1.0, 0))  # the record says 1.0
    selection = _select(tmp_path, configs)
    assert len(selection.runs) == 1 and selection.left_out == []


def test_select_names_lr_off_the_grid_and_unknown_optimizers(sweep):
    root, configs = sweep
    write_record(root, run_config("e", "momo", 0.5, 0))
    write_record(root, run_config("e", "adam", 1e-3, 0))
    reasons = _select(root, configs).reasons()
    assert "1 run with optimizer.lr=0.5 (the sweep's: 0.1, 1)" in reasons
    assert "1 run with optimizer adam (the sweep's: momo, sgd_m)" in reasons


def test_select_leaves_out_failed_runs_and_lists_missing_ones(tmp_path):
    configs = write_sweep(tmp_path, "e", grids=GRIDS, seeds=(0, 1), failed={("momo", 1.0, 1)})
    configs.append(run_config("e", "sgd_m", 1.0, 0))  # expected, never run
    selection = _select(tmp_path, configs)
    assert len(selection.runs) == 5
    assert selection.reasons() == ["1 run failed (make sweep reruns failed runs)"]
    assert [(m.optimizer, m.lr, m.seed) for m in selection.missing] == [("sgd_m", 1.0, 0)]
    assert selection.status == {"completed": 5, "diverged": 0, "failed": 1, "missing": 1}


def test_select_keeps_diverged_runs_and_prefers_a_finished_record(tmp_path):
    config = run_config("e", "momo", 1.0, 0)
    write_record(tmp_path, config, status="failed")
    (tmp_path / "copy").mkdir()
    write_record(tmp_path / "copy", config, status="diverged")
    diverged = next((tmp_path / "copy" / "runs" / "e").iterdir())
    diverged.rename(tmp_path / "runs" / "e" / f"{diverged.name}x")  # a second record of the run
    selection = _select(tmp_path, [config])
    assert [json.loads((p / "run.json").read_text())["status"] for p in selection.runs] == [
        "diverged"
    ]
    assert [left.status for left in selection.left_out] == ["failed"]


TINY = """
experiment: fashion_mnist_mlp
params:
  seed: [0, 1]
optimizers:
  momo:
    optimizer.lr: [0.1, 10.0]
  sgd_m:
    - {optimizer.lr: 0.01, optimizer.weight_decay: 0.0}
"""


def test_sweep_protocol_composes_each_run_as_hydra_does(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    runs = sweep_protocol(
        "fashion_mnist_mlp", ["profile=smoke", "epochs=4"], tmp_path / "tiny.yaml"
    )
    assert sorted((r.optimizer, r.lr, r.seed) for r in runs) == [
        ("momo", 0.1, 0), ("momo", 0.1, 1), ("momo", 10.0, 0), ("momo", 10.0, 1),
        ("sgd_m", 0.01, 0), ("sgd_m", 0.01, 1),
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(layout.CONFIG_DIR), version_base="1.3"):
        for run in runs:
            cfg = compose("train", overrides=list(run.overrides))
            composed = OmegaConf.to_container(cfg, resolve=True)
            assert scientific(composed) == run.config
    assert runs[0].config["epochs"] == 4.0 and runs[0].config["profile.name"] == "smoke"
    assert "logger._target_" not in runs[0].config and "device" not in runs[0].config


def test_select_sweep_runs_on_records_of_the_composed_configs(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    runs = sweep_protocol("fashion_mnist_mlp", ["profile=smoke"], tmp_path / "tiny.yaml")
    with initialize_config_dir(config_dir=str(layout.CONFIG_DIR), version_base="1.3"):
        for run in runs[:4]:  # the momo block has run; the sgd_m block has not
            cfg = compose("train", overrides=list(run.overrides))
            write_record(tmp_path, OmegaConf.to_container(cfg, resolve=True))
        # the default profile (10 epochs) of a momo run: not this sweep's protocol
        overrides = [o for o in runs[0].overrides if o != "profile=smoke"]
        default = compose("train", overrides=overrides)
        write_record(tmp_path, OmegaConf.to_container(default, resolve=True))
    selection = select_sweep_runs(
        "fashion_mnist_mlp", tmp_path, ["profile=smoke"], tmp_path / "tiny.yaml"
    )
    assert len(selection.runs) == 4 and len(selection.missing) == 2
    assert len(selection.left_out) == 1
    assert selection.left_out[0].reason.startswith("with epochs=10 (the sweep's protocol: 2)")
