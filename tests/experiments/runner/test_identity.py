"""What a run is: the scientific config, run ids, run names and sweep ids (docs/design.md §4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _toy_task import compose_config, toy_config

from experiments.runner import identity, records, train


def _id(*overrides: str) -> str:
    return identity.run_id(compose_config("experiment=mnist_mlp", *overrides))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("optimizer.lr=1", "optimizer.lr=1.0"),
        ("optimizer.lr=1e3", "optimizer.lr=1000"),
        ("optimizer.weight_decay=0", "optimizer.weight_decay=0.0"),
        ("epochs=10", "epochs=10.0"),
        ("optimizer.lr=0.1", "optimizer.lr=1e-1"),
    ],
)
def test_run_id_takes_numbers_by_value(one: str, other: str) -> None:
    assert _id(one) == _id(other)


def test_run_id_keeps_booleans_apart_from_numbers() -> None:
    assert _id("optimizer.bias_correction=true") != _id("optimizer.bias_correction=1")


def test_run_id_does_not_depend_on_the_logger_or_where_the_run_goes() -> None:
    base = _id()
    assert base == _id(
        "logger=wandb",
        "logger.group=some-sweep",
        "logger.tags=[a,b]",
        "results_dir=/elsewhere",
        "data_dir=/data",
        "device=cpu",
        "checkpoint=false",
    )
    assert len(base) == 12 and int(base, 16) >= 0


def test_run_id_changes_with_what_changes_the_result() -> None:
    changed = ["seed=1", "optimizer.lr=0.5", "optimizer=adam", "profile=smoke", "epochs=3",
               "amp=bf16", "loss_lower_bound=-1", "task.batch_size=64"]  # fmt: skip
    ids = {_id(), *(_id(o) for o in changed)}
    assert len(ids) == len(changed) + 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_scientific_config_rejects_a_non_finite_number_naming_its_key(value: str) -> None:
    cfg = compose_config("experiment=mnist_mlp", f"optimizer.weight_decay={value}")
    with pytest.raises(ValueError, match=rf"^Invalid optimizer\.weight_decay: {value} \(a finite"):
        identity.run_id(cfg)
    betas = compose_config("experiment=mnist_mlp", "optimizer=adam", "optimizer.betas=[0.9,nan]")
    with pytest.raises(ValueError, match=r"Invalid optimizer\.betas\[1\]: nan"):
        identity.scientific_config(betas)


def test_scientific_config_drops_the_non_scientific_keys_only() -> None:
    cfg = compose_config("experiment=fashion_mnist_mlp", "logger=wandb")
    kept = identity.scientific_config(cfg)
    assert not {"logger", "results_dir", "data_dir", "device", "checkpoint"} & set(kept)
    assert "download" not in kept["task"] and kept["task"]["batch_size"] == 128
    assert kept["optimizer"]["lr"] == 1 and isinstance(kept["optimizer"]["lr"], int)
    assert kept["seed"] == 0 and kept["trace_rows"] == 2000 and kept["amp"] == "none"


def test_run_id_of_a_record_is_its_config_yaml_s(tmp_path: Path) -> None:
    """The analysis can recompute a record's id (and its scientific config) from config.yaml alone."""
    cfg = toy_config(tmp_path, "optimizer=momo", "optimizer.lr=0.1")
    record = records.run_paths(cfg).record
    train.train(cfg)
    saved = yaml.safe_load((record / "config.yaml").read_text())
    assert identity.run_id(saved) == record.name == identity.run_id(cfg)


def test_run_name_says_optimizer_lr_and_seed() -> None:
    cfg = compose_config("experiment=mnist_mlp", "optimizer=sgd_m", "optimizer.lr=1e-3", "seed=2")
    assert identity.run_name(cfg) == "sgd_m lr=0.001 seed=2"


def test_sweep_id_hashes_the_set_of_run_ids() -> None:
    first = identity.sweep_id("fashion_mnist_mlp", ["b", "a", "a"])
    assert first == identity.sweep_id("fashion_mnist_mlp", ["a", "b"])
    assert first.startswith("fashion_mnist_mlp-") and len(first.split("-")[-1]) == 8
    assert first != identity.sweep_id("fashion_mnist_mlp", ["a", "b", "c"])
