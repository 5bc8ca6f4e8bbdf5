"""Image classification with cross-entropy: the MNIST, CIFAR and Imagenet32 experiments (docs/experiments.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

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
from experiments.runner.distributed import DistContext
from experiments.tasks.base import Task, check_split, epoch_batches, seeded_model

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(kw_only=True)
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
    """

    score_name = "acc"
    higher_is_better = True
    batchable = True

    dataset: str
    model: Callable[[], torch.nn.Module]
    batch_size: int
    mean: Sequence[float]
    std: Sequence[float]
    augment: bool = False
    crop_padding: int = 4
    augment_train_eval: bool = False
    drop_last: bool = True
    eval_batch_size: int = 1024
    download: bool = False
    synthetic_n_train: int = 256
    synthetic_n_val: int = 128
    _data: ImageData | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset: {self.dataset!r}; known: {sorted(DATASETS)}")
        channels = DATASETS[self.dataset].image_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.dataset} has {channels} channels: mean {self.mean} and std {self.std} must match"
            )
        self.check_positive("batch_size", "eval_batch_size")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
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
        return epoch_batches(self._sizes()[0], self.batch_size, self.drop_last)

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

    def eval_batches(self, split: str) -> Iterator[Batch]:
        data = self._loaded()
        if check_split(split) == "train":
            images, labels = data.train_images, data.train_labels
        else:
            images, labels = data.val_images, data.val_labels
        augment = split == "train" and self.augment_train_eval
        # a fixed generator: the augmented evaluation is the same at every epoch
        generator = torch.Generator().manual_seed(self.model_seed) if augment else None
        return self._eval_batches(images, labels, generator)

    def _eval_batches(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
    ) -> Iterator[Batch]:
        for start in range(0, labels.shape[0], self.eval_batch_size):
            x = images[start : start + self.eval_batch_size]
            if generator is not None:
                x = random_crop_flip(x, generator, self.crop_padding)
            yield normalize(x, self._mean, self._std), labels[start : start + self.eval_batch_size]

    def eval_sums(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images).float()
        return {
            "loss": F.cross_entropy(logits, labels, reduction="sum"),
            "score": (logits.argmax(dim=1) == labels).sum(),
            "count": torch.full((), labels.shape[0], device=labels.device),
        }

    def _loaded(self) -> ImageData:
        if self._data is None:
            raise RuntimeError("Call setup(device) before using the task's data")
        return self._data

    def _sizes(self) -> tuple[int, int]:
        data = self._loaded()
        return data.train_labels.shape[0], data.val_labels.shape[0]
