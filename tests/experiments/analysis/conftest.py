"""The tiny Fashion-MNIST sweep whose records the aggregate, plot and report tests read."""

from pathlib import Path

import pytest
from fake_runs import composed_configs, write_record

from experiments.analysis import aggregate

TINY = """
experiment: fashion_mnist_mlp
params:
  seed: [0, 1]
optimizers:
  momo:
    optimizer.lr: [0.1, 10.0]
  sgd_m:
    optimizer.lr: [0.01]
  momo_star:
    optimizer.lr: [1.0]
"""


def _write_sweep(root: Path) -> Path:
    """Records of the tiny sweep run with profile=smoke: all but SGD-M's seed 1, plus a 10-epoch run
    of the default profile that is not part of it."""
    (root / "tiny.yaml").write_text(TINY)
    configs = composed_configs("fashion_mnist_mlp", ["profile=smoke"], root / "tiny.yaml")
    for config in configs:
        if (config["optimizer"]["name"], config["seed"]) != ("sgd_m", 1):
            write_record(root, config)
    (default,) = composed_configs("fashion_mnist_mlp", [], root / "tiny.yaml")[:1]
    write_record(root, default)
    return root


def _aggregate(root: Path) -> Path:
    """`make aggregate ARGS=profile=smoke` of the tiny sweep in `root`."""
    args = ["fashion_mnist_mlp", "profile=smoke", "--file", str(root / "tiny.yaml")]
    aggregate.main([*args, "--results-dir", str(root)])
    return root


@pytest.fixture
def sweep(tmp_path):
    return _write_sweep(tmp_path)


@pytest.fixture
def aggregated(sweep):
    """The tiny sweep after `make aggregate`."""
    return _aggregate(sweep)


@pytest.fixture(scope="module")
def aggregated_once(tmp_path_factory):
    """As `aggregated`, once per test module, for tests that only read it."""
    return _aggregate(_write_sweep(tmp_path_factory.mktemp("sweep")))
