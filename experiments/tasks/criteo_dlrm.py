"""Click-through prediction on Criteo Kaggle with torchrec's DLRM (the criteo_dlrm experiment,
docs/experiments.md).

Loss: mean binary cross-entropy of the logits; score: AUC (torchmetrics), which is not an average over
examples, so the task evaluates whole splits (`eval_by_sums = False`); `evaluate` also reports the
accuracy at threshold 0.5 as the extra key "acc" (recorded as `val/acc`). The data is the output
of `scripts/prepare_criteo.py`, read from memory-mapped arrays by batched indexing
(`experiments.data.criteo`).

torchrec is an optional dependency (its CPU and GPU builds differ, see scripts/install_torchrec.sh):
this module imports without it, and `setup` says how to install it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data import DatasetNotFoundError, criteo
from experiments.runner.distributed import DistContext
from experiments.tasks.base import Task, check_split, seeded_model

try:
    from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
    from torchrec.datasets.utils import Batch
    from torchrec.models.dlrm import DLRM
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
except (ImportError, OSError) as error:  # OSError: the CUDA fbgemm build without a GPU driver
    _TORCHREC_IMPORT_ERROR: Exception | None = error
else:
    _TORCHREC_IMPORT_ERROR = None

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "bash scripts/install_torchrec.sh (fbgemm-gpu-cpu on CPU machines, fbgemm-gpu on GPU ones)"
)


def require_torchrec() -> None:
    """Raise a clear ImportError when torchrec (or fbgemm / torchmetrics) cannot be imported."""
    if _TORCHREC_IMPORT_ERROR is not None:
        raise ImportError(
            f"The criteo_dlrm task needs torchrec, which failed to import "
            f"({_TORCHREC_IMPORT_ERROR}). Install it with: {INSTALL_HINT}"
        ) from _TORCHREC_IMPORT_ERROR


@dataclass(kw_only=True)
class CriteoDLRM(Task):
    """DLRM (bottom MLP, 26 embedding bags, pairwise dot interaction, top MLP) on Criteo's features.

    - `model_seed`: every run starts from the same initial model; the run's seed changes the data
      order only.
    - `dense_arch_layer_sizes` end in `embedding_dim` (DLRM projects the dense features into the
      embedding space); `over_arch_layer_sizes` end in 1 (one click logit).
    - The data are read from `data_dir/criteo/` (scripts/prepare_criteo.py); the table sizes come from
      its meta.json, or are `synthetic_table_size` with `synthetic=True` (stand-in labels from a
      planted logistic model, so the AUC can rise).
    """

    score_name = "auc"
    higher_is_better = True
    eval_by_sums = False

    batch_size: int = 128
    eval_batch_size: int = 16384
    embedding_dim: int = 16
    dense_arch_layer_sizes: Sequence[int] = (512, 256, 64, 16)
    over_arch_layer_sizes: Sequence[int] = (512, 256, 1)
    synthetic_n_train: int = 4096
    synthetic_n_val: int = 1024
    synthetic_table_size: int = 100
    _splits: dict[str, criteo.CriteoArrays] = field(default_factory=dict, init=False, repr=False)
    _table_sizes: list[int] = field(default_factory=list, init=False, repr=False)
    _source: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("batch_size", "eval_batch_size")
        self.dense_arch_layer_sizes = list(self.dense_arch_layer_sizes)
        self.over_arch_layer_sizes = list(self.over_arch_layer_sizes)
        if self.dense_arch_layer_sizes[-1] != self.embedding_dim:
            raise ValueError(
                f"dense_arch_layer_sizes must end in embedding_dim ({self.embedding_dim}): "
                f"{self.dense_arch_layer_sizes}"
            )
        if self.over_arch_layer_sizes[-1] != 1:
            raise ValueError(f"over_arch_layer_sizes must end in 1: {self.over_arch_layer_sizes}")

    @property
    def criteo_dir(self) -> Path:
        """Where scripts/prepare_criteo.py wrote the arrays."""
        return self.data_dir / "criteo"

    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
        require_torchrec()
        self._device = torch.device(device)
        if self.synthetic:
            n_train = max(self.synthetic_n_train, 2 * self.batch_size)
            self._splits = criteo.synthetic_criteo(
                n_train, self.synthetic_n_val, self.synthetic_table_size, seed=self.model_seed
            )
            self._table_sizes = [self.synthetic_table_size] * criteo.N_SPARSE
            self._source = "synthetic"
        else:
            meta = self._find_prepared_data()
            self._splits = {
                split: criteo.load_split(self.criteo_dir, split) for split in criteo.SPLITS
            }
            self._table_sizes = list(meta["table_sizes"])
            self._source = str(self.criteo_dir)
        n_train, n_val = (len(self._splits[s]) for s in criteo.SPLITS)
        log.info("criteo: %d train / %d val rows from %s", n_train, n_val, self._source)

    def _find_prepared_data(self) -> dict:
        expected = [self.criteo_dir / criteo.META_FILE] + [
            path
            for split in criteo.SPLITS
            for path in criteo.split_paths(self.criteo_dir, split).values()
        ]
        if not all(path.is_file() for path in expected):
            raise DatasetNotFoundError(
                "criteo_kaggle",
                [str(path) for path in expected],
                "download the Criteo Kaggle display-advertising data (train.txt, ~11 GB), then run "
                "`python scripts/prepare_criteo.py --input <dir>/train.txt "
                f"--output {self.criteo_dir}`",
            )
        return criteo.load_meta(self.criteo_dir)

    @property
    def data_info(self) -> dict:
        return {
            "dataset": "criteo_kaggle",
            "source": self._source,
            "synthetic": self.synthetic,
            "n_train": len(self._loaded("train")),
            "n_val": len(self._loaded("val")),
        }

    def build_model(self) -> torch.nn.Module:
        require_torchrec()
        if not self._table_sizes:
            raise RuntimeError("Call setup(device) before build_model()")
        tables = [
            EmbeddingBagConfig(
                name=f"t_{feature}",
                embedding_dim=self.embedding_dim,
                num_embeddings=size,
                feature_names=[feature],
            )
            for feature, size in zip(criteo.SPARSE_COLUMNS, self._table_sizes, strict=True)
        ]
        # built on the CPU so that the initial model is the same on every device
        model = seeded_model(
            lambda: DLRM(
                embedding_bag_collection=EmbeddingBagCollection(
                    tables=tables, device=torch.device("cpu")
                ),
                dense_in_features=criteo.N_DENSE,
                dense_arch_layer_sizes=self.dense_arch_layer_sizes,
                over_arch_layer_sizes=self.over_arch_layer_sizes,
            ),
            self.model_seed,
        )
        return model.to(self._device)

    def batches_per_epoch(self) -> int:
        return len(self._loaded("train")) // self.batch_size

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        data = self._loaded("train")
        order = torch.randperm(len(data), generator=generator, device=generator.device).cpu()
        for i in range(self.batches_per_epoch()):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            # sorted rows read the memory-mapped files front to back; the order inside a batch is
            # irrelevant to a mean loss
            yield self._batch(data, index.sort().values.numpy())

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(_logits(model, batch), batch.labels.float())

    def eval_batches(self, split: str) -> Iterator[Batch]:
        data = self._loaded(check_split(split))
        size = self.eval_batch_size
        return (
            self._batch(data, np.arange(start, min(start + size, len(data))))
            for start in range(0, len(data), size)
        )

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        auroc = BinaryAUROC().to(self._device)
        accuracy = BinaryAccuracy().to(self._device)
        loss_sum = torch.zeros((), device=self._device)
        count = 0
        for batch in batches:
            logits = _logits(model, batch).float()
            loss_sum += F.binary_cross_entropy_with_logits(
                logits, batch.labels.float(), reduction="sum"
            )
            probabilities = torch.sigmoid(logits)
            auroc.update(probabilities, batch.labels)
            accuracy.update(probabilities, batch.labels)
            count += len(batch.labels)
        return {
            "loss": (loss_sum / count).item(),
            "score": auroc.compute().item(),
            "acc": accuracy.compute().item(),
        }

    def _batch(self, data: criteo.CriteoArrays, rows: np.ndarray) -> Batch:
        """Rows `rows` of `data` as a torchrec Batch on the task's device (one id per feature)."""
        sparse = torch.from_numpy(np.ascontiguousarray(data.sparse[rows].T)).reshape(-1)
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=criteo.SPARSE_COLUMNS,
            values=sparse,
            lengths=torch.ones(len(sparse), dtype=sparse.dtype),
        )
        batch = Batch(
            dense_features=torch.from_numpy(data.dense[rows]),
            sparse_features=features,
            labels=torch.from_numpy(data.labels[rows]).long(),
        )
        return batch.to(self._device, non_blocking=True)

    def _loaded(self, split: str) -> criteo.CriteoArrays:
        if split not in self._splits:
            raise RuntimeError("Call setup(device) before using the task's data")
        return self._splits[split]


def _logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch.dense_features, batch.sparse_features).squeeze(-1)
