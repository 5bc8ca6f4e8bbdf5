"""Click-through prediction on Criteo Kaggle with torchrec's DLRM (SPEC.md §4, `criteo_dlrm`).

Loss: mean binary cross-entropy of the logits; score: AUC (torchmetrics); `evaluate` also reports
the accuracy at threshold 0.5 as the extra key "acc" (recorded as `val/acc`). The data is the output
of `scripts/prepare_criteo.py`, read from memory-mapped arrays by batched indexing
(`experiments.data.criteo`).

torchrec is an optional dependency (its CPU and GPU builds differ, see scripts/install_torchrec.sh):
this module imports without it, and `setup` says how to install it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data import DatasetNotFoundError, criteo
from experiments.tasks.base import (
    PAPER_MODEL_SEED,
    Task,
    capped,
    seeded_model,
)

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


class CriteoDLRM(Task):
    """DLRM (bottom MLP, 26 embedding bags, pairwise dot interaction, top MLP) on Criteo's features.

    - `model_seed`: every run starts from the same initial model; the run's seed changes the data
      order only.
    - `dense_arch_layer_sizes` end in `embedding_dim` (DLRM projects the dense features into the
      embedding space); `over_arch_layer_sizes` end in 1 (one click logit).
    - The table sizes come from the prepared data's meta.json, or are `synthetic_table_size` with
      `synthetic=True` (stand-in labels from a planted logistic model, so the AUC can rise).
    - `max_train_batches` / `max_eval_batches` cap the batches per epoch / per evaluation (smoke).
    """

    score_name = "auc"
    higher_is_better = True

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int = 16384,
        embedding_dim: int = 16,
        dense_arch_layer_sizes: Sequence[int] = (512, 256, 64, 16),
        over_arch_layer_sizes: Sequence[int] = (512, 256, 1),
        model_seed: int = PAPER_MODEL_SEED,
        data_dir: str | Path = "data",
        synthetic: bool = False,
        synthetic_n_train: int = 4096,
        synthetic_n_val: int = 1024,
        synthetic_table_size: int = 100,
        max_train_batches: int | None = None,
        max_eval_batches: int | None = None,
    ) -> None:
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"Invalid {key}: {value}")
        if dense_arch_layer_sizes[-1] != embedding_dim:
            raise ValueError(
                f"dense_arch_layer_sizes must end in embedding_dim ({embedding_dim}): "
                f"{list(dense_arch_layer_sizes)}"
            )
        if over_arch_layer_sizes[-1] != 1:
            raise ValueError(f"over_arch_layer_sizes must end in 1: {list(over_arch_layer_sizes)}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.embedding_dim = embedding_dim
        self.dense_arch_layer_sizes = list(dense_arch_layer_sizes)
        self.over_arch_layer_sizes = list(over_arch_layer_sizes)
        self.model_seed = model_seed
        self.data_dir = Path(data_dir) / "criteo"
        self.synthetic = synthetic
        self.synthetic_n_train = synthetic_n_train
        self.synthetic_n_val = synthetic_n_val
        self.synthetic_table_size = synthetic_table_size
        self.max_train_batches = max_train_batches
        self.max_eval_batches = max_eval_batches
        self._splits: dict[str, criteo.CriteoArrays] = {}
        self._table_sizes: list[int] = []
        self._source = ""
        self._device = torch.device("cpu")

    def setup(self, device: torch.device) -> None:
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
                split: criteo.load_split(self.data_dir, split) for split in criteo.SPLITS
            }
            self._table_sizes = list(meta["table_sizes"])
            self._source = str(self.data_dir)
        n_train, n_val = (len(self._splits[s]) for s in criteo.SPLITS)
        log.info("criteo: %d train / %d val rows from %s", n_train, n_val, self._source)

    def _find_prepared_data(self) -> dict:
        expected = [self.data_dir / criteo.META_FILE] + [
            path
            for split in criteo.SPLITS
            for path in criteo.split_paths(self.data_dir, split).values()
        ]
        if not all(path.is_file() for path in expected):
            raise DatasetNotFoundError(
                "criteo_kaggle",
                [str(path) for path in expected],
                "download the Criteo Kaggle display-advertising data (train.txt, ~11 GB), then run "
                "`python scripts/prepare_criteo.py --input <dir>/train.txt "
                f"--output {self.data_dir}`",
            )
        return criteo.load_meta(self.data_dir)

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
        full = len(self._loaded("train")) // self.batch_size
        return capped(full, self.max_train_batches)

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

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        if split not in criteo.SPLITS:
            raise ValueError(f"Unknown split: {split!r}; use 'train' or 'val'")
        data = self._loaded(split)
        auroc = BinaryAUROC().to(self._device)
        accuracy = BinaryAccuracy().to(self._device)
        loss_sum = torch.zeros((), device=self._device)
        count = 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i, start in enumerate(range(0, len(data), self.eval_batch_size)):
                if self.max_eval_batches is not None and i >= self.max_eval_batches:
                    break
                batch = self._batch(
                    data, np.arange(start, min(start + self.eval_batch_size, len(data)))
                )
                logits = _logits(model, batch).float()
                loss_sum += F.binary_cross_entropy_with_logits(
                    logits, batch.labels.float(), reduction="sum"
                )
                probabilities = torch.sigmoid(logits)
                auroc.update(probabilities, batch.labels)
                accuracy.update(probabilities, batch.labels)
                count += len(batch.labels)
        model.train(was_training)
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
