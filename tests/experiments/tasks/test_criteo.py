"""Criteo preprocessing (text -> memory-mapped arrays) and the DLRM task, on generated data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _toy_task import CONFIG_DIR, compose_config, evaluate
from omegaconf import OmegaConf

from experiments.data import DatasetNotFoundError, criteo
from experiments.runner import train
from experiments.tasks import criteo_dlrm
from experiments.tasks.criteo_dlrm import CriteoDLRM
from momo import MomoAdam

REPO = Path(__file__).resolve().parents[3]
needs_torchrec = pytest.mark.skipif(
    criteo_dlrm._TORCHREC_IMPORT_ERROR is not None, reason="bash scripts/install_torchrec.sh"
)


def _line(label: int, dense: list[str], sparse: list[str]) -> str:
    assert len(dense) == criteo.N_DENSE and len(sparse) == criteo.N_SPARSE
    return "\t".join([str(label), *dense, *sparse]) + "\n"


def _generated_lines(n: int, seed: int = 0) -> list[tuple[int, list[str], list[str]]]:
    """Criteo-format rows: ~20% missing counts, negative counts, ~10% missing hashes, a few frequent
    hashes among random ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        dense = [
            "" if rng.random() < 0.2 else str(rng.integers(-3, 50)) for _ in range(criteo.N_DENSE)
        ]
        hashes = [0x05DB9164, 0x68FD1E64, 0xFFFFFFFF, int(rng.integers(1 << 32))]
        sparse = [
            "" if rng.random() < 0.1 else f"{int(rng.choice(hashes)):08x}"
            for _ in range(criteo.N_SPARSE)
        ]
        rows.append((int(rng.integers(2)), dense, sparse))
    return rows


def _write(path: Path, rows: list[tuple[int, list[str], list[str]]]) -> Path:
    path.write_text("".join(_line(*row) for row in rows))
    return path


def test_hex_to_int_parses_hashes_and_missing_values() -> None:
    values = pd.Series(["68fd1e64", "", None, "0", "FFFFFFFF", "a"], dtype=object)
    expected = [0x68FD1E64, criteo.MISSING, criteo.MISSING, 0, 0xFFFFFFFF, 10]
    assert criteo.hex_to_int(values).tolist() == expected


def test_hex_to_int_rejects_non_hex_values() -> None:
    with pytest.raises(ValueError):
        criteo.hex_to_int(pd.Series(["05db9164", "12g4"], dtype=object))


def test_value_counter_merges_counts_across_updates() -> None:
    counter = criteo.ValueCounter()
    counter.update(np.array([], dtype=np.int64))
    counter.update(np.array([3, 1, 3, criteo.MISSING]))
    counter.update(np.array([1, 5, 3]))
    assert counter.keys.tolist() == [criteo.MISSING, 1, 3, 5]
    assert counter.counts.tolist() == [1, 2, 3, 1]
    assert counter.vocabulary(min_count=2).tolist() == [1, 3]


def test_count_rows_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\ny")
    assert criteo.count_rows(tmp_path / "a", block_bytes=1) == 2
    assert criteo.count_rows(tmp_path / "b", block_bytes=1) == 2


def test_prepare_criteo_round_trips_handwritten_lines(tmp_path: Path) -> None:
    empty = [""] * criteo.N_SPARSE
    a, b, c = "0000000a", "05db9164", "68fd1e64"
    rows = [
        (1, ["-2", "", "0", "3", *["1"] * 9], [a, *empty[1:]]),
        (0, ["7", *[""] * 12], [a, *empty[1:]]),
        (0, [""] * 13, [b, *empty[1:]]),
        (1, ["1"] * 13, [a, *empty[1:]]),
        (0, ["1"] * 13, [b, *empty[1:]]),
        (0, ["1"] * 13, ["", *empty[1:]]),
        (1, ["2"] * 13, ["", c, *empty[2:]]),  # the 7th day: validation
    ]
    source = _write(tmp_path / "train.txt", rows)
    meta = criteo.prepare_criteo(source, tmp_path / "out", min_count=2, chunk_rows=4)

    assert (meta["n_train"], meta["n_val"]) == (6, 1)
    train, val = (criteo.load_split(tmp_path / "out", s) for s in criteo.SPLITS)
    assert train.dense.dtype == np.float32 and train.sparse.dtype == np.int32
    # negative and missing counts count as 0
    np.testing.assert_allclose(train.dense[0], [0.0, 0.0, 0.0, math.log(4)] + [math.log(2)] * 9)
    np.testing.assert_allclose(train.dense[1], [math.log(8)] + [0.0] * 12, rtol=1e-6)
    np.testing.assert_array_equal(train.labels, [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(val.labels, [1])
    # feature 0 in the training days: a x3, b x2, missing x1 -> vocabulary [a, b] -> ids 1, 2;
    # missing is rare there (val's second one does not count) -> 0
    np.testing.assert_array_equal(train.sparse[:, 0], [1, 1, 2, 1, 2, 0])
    assert val.sparse[0, 0] == 0
    # features 1..25 are missing in every training row: one frequent value -> id 1, tables of 2
    # rows; c, seen only in val, -> 0
    assert (train.sparse[:, 1:] == 1).all()
    assert val.sparse[0, 1] == 0 and (val.sparse[0, 2:] == 1).all()
    assert meta["table_sizes"] == [3] + [2] * 25
    assert json.loads((tmp_path / "out" / criteo.META_FILE).read_text()) == meta
    assert not list((tmp_path / "out").glob(".raw_*"))


def test_prepare_criteo_matches_a_reference_over_chunk_boundaries(tmp_path: Path) -> None:
    rows = _generated_lines(50)
    source = _write(tmp_path / "train.txt", rows)
    meta = criteo.prepare_criteo(source, tmp_path / "out", min_count=2, chunk_rows=7)
    n_val = len(rows) // 7
    n_train = len(rows) - n_val
    assert (meta["n_train"], meta["n_val"]) == (n_train, n_val)

    def parsed(row: tuple[int, list[str], list[str]]) -> tuple[list[float], list[int]]:
        dense = [math.log1p(max(int(x or 0), 0)) for x in row[1]]
        return dense, [int(h, 16) if h else criteo.MISSING for h in row[2]]

    train, val = (criteo.load_split(tmp_path / "out", s) for s in criteo.SPLITS)
    for j in range(criteo.N_SPARSE):
        counts = Counter(parsed(row)[1][j] for row in rows[:n_train])
        vocabulary = sorted(v for v, k in counts.items() if k >= 2)
        ids = {v: i + 1 for i, v in enumerate(vocabulary)}
        expected = [ids.get(parsed(row)[1][j], 0) for row in rows]
        np.testing.assert_array_equal(
            np.concatenate([train.sparse[:, j], val.sparse[:, j]]), expected
        )
        assert meta["table_sizes"][j] == len(vocabulary) + 1
    dense = np.array([parsed(row)[0] for row in rows], dtype=np.float32)
    np.testing.assert_allclose(np.concatenate([train.dense, val.dense]), dense, rtol=1e-6)
    labels = [row[0] for row in rows]
    np.testing.assert_array_equal(np.concatenate([train.labels, val.labels]), labels)


def test_prepare_criteo_hashes_values_modulo_the_table_size(tmp_path: Path) -> None:
    rows = _generated_lines(14, seed=1)
    source = _write(tmp_path / "train.txt", rows)
    meta = criteo.prepare_criteo(source, tmp_path / "out", hash_size=1000, chunk_rows=5)
    assert meta["table_sizes"] == [1000] * criteo.N_SPARSE
    train, val = (criteo.load_split(tmp_path / "out", s) for s in criteo.SPLITS)
    expected = [[(int(h, 16) if h else -1) % 1000 for h in row[2]] for row in rows]
    np.testing.assert_array_equal(np.concatenate([train.sparse, val.sparse]), expected)


@needs_torchrec
def test_criteo_dlrm_config_builds_the_dlrm_kaggle_architecture(make_task) -> None:
    task = make_task("criteo_dlrm", synthetic_n_train=256, synthetic_n_val=64)
    task.setup(torch.device("cpu"))
    model = task.build_model()
    tables = model.sparse_arch.embedding_bag_collection.embedding_bag_configs()
    assert len(tables) == 26
    assert {(t.embedding_dim, t.num_embeddings) for t in tables} == {(16, 100)}
    linear = [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    # bottom MLP, then the top MLP over the dense vector and the C(27, 2) pairwise dot products
    top_in = 16 + 27 * 26 // 2
    assert linear == [
        (13, 512),
        (512, 256),
        (256, 64),
        (64, 16),
        (top_in, 512),
        (512, 256),
        (256, 1),
    ]


@needs_torchrec
def test_criteo_dlrm_trains_on_synthetic_data_with_momo_adam(make_task) -> None:
    torch.set_num_threads(1)
    task = make_task("criteo_dlrm")  # batch 128, 4096 synthetic rows
    task.setup(torch.device("cpu"))
    assert task.data_info["synthetic"] and task.batches_per_epoch() == 4096 // 128
    model = task.build_model()
    optimizer = MomoAdam(model.parameters(), lr=1e-2)
    before = evaluate(task, model, "val")

    losses = []
    for batch in task.train_batches(torch.Generator().manual_seed(0)):
        optimizer.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step(loss=loss)
        losses.append(loss.item())

    assert len(losses) == 32 and all(math.isfinite(x) for x in losses)
    assert torch.isfinite(optimizer.param_groups[0]["step_size"])
    after = evaluate(task, model, "val")
    for metrics in (before, after, evaluate(task, model, "train")):
        assert set(metrics) == {"loss", "score", "acc"}
        assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0
        assert 0.0 <= metrics["score"] <= 1.0 and 0.0 <= metrics["acc"] <= 1.0
    # the planted signal is learnable: one epoch lifts the val AUC well above chance
    assert abs(before["score"] - 0.5) < 0.1 and after["score"] > 0.75


@needs_torchrec
def test_criteo_dlrm_reads_prepared_data(tmp_path: Path) -> None:
    source = _write(tmp_path / "train.txt", _generated_lines(70))
    meta = criteo.prepare_criteo(source, tmp_path / "data" / "criteo", min_count=2)
    task = CriteoDLRM(data_dir=tmp_path / "data", batch_size=8)
    task.setup(torch.device("cpu"))
    assert task.data_info == {
        "dataset": "criteo_kaggle",
        "source": str(tmp_path / "data" / "criteo"),
        "synthetic": False,
        "n_train": 60,
        "n_val": 10,
    }
    model = task.build_model()
    tables = model.sparse_arch.embedding_bag_collection.embedding_bag_configs()
    assert [t.num_embeddings for t in tables] == meta["table_sizes"]
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert len(batches) == 60 // 8 and batches[0].dense_features.shape == (8, 13)
    assert math.isfinite(task.loss(model, batches[0]).item())
    assert 0.0 <= evaluate(task, model, "val")["score"] <= 1.0
    assert not model.training  # the runner's evaluation put it in eval mode


@needs_torchrec
def test_criteo_dlrm_missing_data_names_the_preparation_command(tmp_path: Path) -> None:
    task = CriteoDLRM(data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError) as error:
        task.setup(torch.device("cpu"))
    message = str(error.value)
    assert "scripts/prepare_criteo.py --input" in message
    assert str(tmp_path / "criteo" / criteo.META_FILE) in message
    assert isinstance(error.value, FileNotFoundError)


def test_criteo_dlrm_without_torchrec_names_the_install_script() -> None:
    code = (
        "import sys; sys.modules['torchrec'] = None\n"
        "import torch\n"
        "from experiments.tasks.criteo_dlrm import CriteoDLRM\n"
        "CriteoDLRM(synthetic=True).setup(torch.device('cpu'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "scripts/install_torchrec.sh" in result.stderr


@needs_torchrec
def test_criteo_dlrm_smoke_run_writes_a_valid_record(tmp_path: Path) -> None:
    cfg = compose_config("experiment=criteo_dlrm", "profile=smoke", f"results_dir={tmp_path}")
    assert cfg.optimizer.name == "momo_adam" and cfg.epochs == 2  # the smoke profile's epochs
    info = train.train(cfg)
    assert info["status"] == "completed", info["error"]
    assert info["score_name"] == "auc" and info["data"]["synthetic"] is True
    final = info["final"]
    assert 0.0 <= final["val/score"] <= 1.0 and 0.0 <= final["val/acc"] <= 1.0
    assert math.isfinite(final["train/loss"]) and math.isfinite(final["optim/step_size_median"])


def test_criteo_dlrm_sweep_compares_adam_and_momo_adam_on_one_grid() -> None:
    sweep = OmegaConf.load(CONFIG_DIR / "sweep" / "criteo_dlrm.yaml")
    assert sweep["experiment"] == "criteo_dlrm"
    assert set(sweep["optimizers"]) == {"adam", "momo_adam"}
    assert len(sweep["params"]["optimizer.lr"]) >= 5 and len(sweep["params"]["seed"]) == 3
