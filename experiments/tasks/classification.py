"""Image classification with cross-entropy: the MNIST, CIFAR and Imagenet32 experiments of SPEC.md §4."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.data.images import (
    DATASETS,
    ImageData,
    load_image_dataset,
    normalize,
    random_crop_flip,
    synthetic_image_dataset,
)
from experiments.tasks.base import PAPER_MODEL_SEED, Task, capped, seeded_model

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class ImageClassification(Task):
    """Top-1 classification of an in-memory image dataset; loss = mean cross-entropy, score = accuracy.

    The paper's protocol, with its quirks as explicit fields:
    - `model_seed`: every run starts from the same initial model; the run's seed (the loop's generator)
      changes only the data order and augmentation.
    - `drop_last`: the incomplete last training batch of an epoch is dropped.
    - `augment`: random crop (zero padding `crop_padding`) + horizontal flip of training batches.
    - `augment_train_eval`: the paper's runner evaluated the *augmented* training set each epoch (its train
      split carries the training transforms). True reproduces that, with a fixed generator so the
      evaluation is deterministic; False evaluates the clean training images.

    Images stay uint8 on the device and are normalised per batch with `mean` and `std` (per channel).
    `synthetic=True` replaces the data by a deterministic stand-in of the same shapes
    (`max(synthetic_n_train, 2 * batch_size)` training and `synthetic_n_val` validation samples).
    `max_train_batches` / `max_eval_batches` cap the batches per epoch / per evaluation (smoke runs).
    """

    score_name = "acc"
    higher_is_better = True

    def __init__(
        self,
        *,
        dataset: str,
        model: Callable[[], torch.nn.Module],
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        crop_padding: int = 4,
        augment_train_eval: bool = False,
        model_seed: int = PAPER_MODEL_SEED,
        drop_last: bool = True,
        eval_batch_size: int = 1024,
        data_dir: str | Path = "data",
        download: bool = False,
        synthetic: bool = False,
        synthetic_n_train: int = 256,
        synthetic_n_val: int = 128,
        max_train_batches: int | None = None,
        max_eval_batches: int | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"Unknown dataset: {dataset!r}; known: {sorted(DATASETS)}")
        channels = DATASETS[dataset].image_shape[0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"{dataset} has {channels} channels: mean {mean} and std {std} must match"
            )
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"Invalid {key}: {value}")
        self.dataset = dataset
        self.model = model
        self.batch_size = batch_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.crop_padding = crop_padding
        self.augment_train_eval = augment_train_eval
        self.model_seed = model_seed
        self.drop_last = drop_last
        self.eval_batch_size = eval_batch_size
        self.data_dir = Path(data_dir)
        self.download = download
        self.synthetic = synthetic
        self.synthetic_n_train = synthetic_n_train
        self.synthetic_n_val = synthetic_n_val
        self.max_train_batches = max_train_batches
        self.max_eval_batches = max_eval_batches
        self._data: ImageData | None = None
        self._device = torch.device("cpu")

    def setup(self, device: torch.device) -> None:
        self._device = torch.device(device)
        if self.synthetic:
            n_train = max(self.synthetic_n_train, 2 * self.batch_size)
            data = synthetic_image_dataset(
                self.dataset, n_train, self.synthetic_n_val, device=self._device
            )
        else:
            data = load_image_dataset(self.dataset, self.data_dir, self.download, self._device)
        self._data = data
        self._mean = torch.tensor(self.mean, device=self._device)
        self._std = torch.tensor(self.std, device=self._device)
        log.info("%s: %d train / %d val images from %s", self.dataset, *self._sizes(), data.source)

    @property
    def data_info(self) -> dict:
        data = self._loaded()
        n_train, n_val = self._sizes()
        return {
            "dataset": self.dataset,
            "source": data.source,
            "synthetic": data.synthetic,
            "n_train": n_train,
            "n_val": n_val,
        }

    def build_model(self) -> torch.nn.Module:
        return seeded_model(self.model, self.model_seed).to(self._device)

    def batches_per_epoch(self) -> int:
        n_train, _ = self._sizes()
        full = (
            n_train // self.batch_size if self.drop_last else math.ceil(n_train / self.batch_size)
        )
        return capped(full, self.max_train_batches)

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        data = self._loaded()
        n_train = data.train_labels.shape[0]
        order = torch.randperm(n_train, generator=generator, device=generator.device)
        order = order.to(self._device)
        for i in range(self.batches_per_epoch()):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = data.train_images[index]
            if self.augment:
                images = random_crop_flip(images, generator, self.crop_padding)
            yield normalize(images, self._mean, self._std), data.train_labels[index]

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        data = self._loaded()
        if split == "train":
            images, labels = data.train_images, data.train_labels
        elif split == "val":
            images, labels = data.val_images, data.val_labels
        else:
            raise ValueError(f"Unknown split: {split!r}; use 'train' or 'val'")
        augment = split == "train" and self.augment_train_eval
        generator = torch.Generator().manual_seed(self.model_seed) if augment else None

        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self._device)
        correct = torch.zeros((), device=self._device, dtype=torch.long)
        count = 0
        with torch.no_grad():
            for i, start in enumerate(range(0, labels.shape[0], self.eval_batch_size)):
                if self.max_eval_batches is not None and i >= self.max_eval_batches:
                    break
                x = images[start : start + self.eval_batch_size]
                y = labels[start : start + self.eval_batch_size]
                if generator is not None:
                    x = random_crop_flip(x, generator, self.crop_padding)
                logits = model(normalize(x, self._mean, self._std)).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
                count += y.shape[0]
        model.train(was_training)
        # one host sync per evaluation, not per batch
        return {"loss": (loss_sum / count).item(), "score": (correct / count).item()}

    def _loaded(self) -> ImageData:
        if self._data is None:
            raise RuntimeError("Call setup(device) before using the task's data")
        return self._data

    def _sizes(self) -> tuple[int, int]:
        data = self._loaded()
        return data.train_labels.shape[0], data.val_labels.shape[0]
