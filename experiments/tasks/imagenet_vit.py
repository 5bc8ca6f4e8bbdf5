"""ImageNet-1k with a timm model and timm's training recipe: the imagenet_vit experiment (docs/experiments.md).

Everything that timm provides comes from timm: the model (`timm.create_model`), the ImageFolder reader
(`timm.data.create_dataset`), the train and eval transforms (`timm.data.create_transform`: random resized
crop with random interpolation, flip, RandAugment; bicubic resize with `crop_pct`), Mixup/CutMix with
label smoothing (`timm.data.Mixup`) and the loss (`timm.loss.BinaryCrossEntropy`).

The recipe is the authors' (their timm fork, fabian-sp/pytorch-image-models, branch momo-experiment:
configs/vit_tiny_patch16_224.yaml run by timm's train.py): `aa: rand-m6-mstd0.5`, `mixup: 0.1`,
`cutmix: 1.0`, `crop_pct: 0.9`, `bce_loss: true`, and train.py's defaults for the rest: label smoothing
0.1 (applied by Mixup to the mixed targets), no BCE target threshold, random train interpolation, and
`--batch-size` per process (GPU).

Unlike the small in-memory datasets, ImageNet is read from disk by a `DataLoader` with worker processes.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import timm.loss
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from experiments.data import DatasetNotFoundError
from experiments.runner.distributed import DistContext
from experiments.tasks.base import Task, check_split, seeded_model

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]

IMAGENET_HOW_TO_GET = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org "
    "(login required); untar the train archive and each per-class tar inside it into "
    "<data_dir>/imagenet/train/<wnid>/*.JPEG, and sort the 50,000 validation images into "
    "<data_dir>/imagenet/val/<wnid>/*.JPEG (the usual valprep.sh step); point data_dir (or MOMO_DATA_DIR) "
    "at the folder holding imagenet/"
)


def _usable_cpus() -> int:
    # the cores this process may run on (a SLURM allocation), not the machine's
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class HostRandomState:
    """Python's and NumPy's global RNG states of the task's own, swapped in for a `with` block.

    timm's augmentations draw from Python's `random` and its Mixup from NumPy's global RNG, with no way to
    pass a generator. Inside `with rngs:` they draw from this object's states (seeded from the run's
    generator); outside, the process's global RNGs are as they were. An epoch is then a function of the
    generator, and the task neither reads nor reseeds the global RNGs of the run.
    """

    def __init__(self, seed: int) -> None:
        with self:
            random.seed(seed)
            np.random.seed(seed % 2**32)

    def __enter__(self) -> HostRandomState:
        self._outside = random.getstate(), np.random.get_state()
        if hasattr(self, "_inside"):
            random.setstate(self._inside[0])
            np.random.set_state(self._inside[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self._inside = random.getstate(), np.random.get_state()
        random.setstate(self._outside[0])
        np.random.set_state(self._outside[1])


def write_synthetic_image_folder(
    root: Path, n_images: int, n_classes: int, seed: int, size: tuple[int, int] = (96, 80)
) -> None:
    """A tiny ImageFolder (`root/<class>/<i>.png`) of random RGB images, for stand-in runs.

    The images are smaller than the model's input and not square, so the real crop and resize run.
    """
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = root / f"class{i % n_classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def timm_data_config(model: str, crop_pct: float) -> dict[str, Any]:
    """timm's data config of `model` (input size, interpolation, mean, std) with our `crop_pct`.

    Read from the model's pretrained config without building the model or touching the hub.
    """
    pretrained_cfg = timm.models.get_pretrained_cfg(model).to_dict()
    return timm.data.resolve_data_config({"crop_pct": crop_pct}, pretrained_cfg=pretrained_cfg)


@dataclass(kw_only=True)
class TimmImageNet(Task):
    """ImageNet-1k top-1 classification with a timm model and timm's augmentation recipe.

    Data: `data_dir/<folder>/{train,val}/<class>/<image>` (ImageFolder layout), read by timm's folder
    reader through a `DataLoader` with `num_workers` processes. `batch_size` is per device, as timm's
    `--batch-size`: under torchrun each rank reads its own `batch_size` images (a `DistributedSampler`
    shard), so the global batch is `batch_size * world_size` (`data_info` records both). Decoding is the
    bottleneck, so the ranks read disjoint images: `shards_batches = True` tells the loop that these
    batches are this rank's already and must not be sliced again. Evaluation is sharded the same way (each
    rank evaluates every world-th image; the runner adds up the ranks' sums).

    Training batches are augmented (random resized crop, flip, RandAugment `auto_augment`) and mixed
    (Mixup/CutMix with `label_smoothing`: soft targets); the loss is timm's BinaryCrossEntropy on those
    targets, binarised only when `bce_target_threshold` is set. Without mixing, the loss smooths the class
    indices itself (timm's train.py does the same). Evaluation uses timm's eval transform (resize to
    `img_size / crop_pct`, centre crop), no mixing, and reports plain cross-entropy and top-1 accuracy;
    the "train" split is a fixed subset of `train_eval_size` training images.

    Randomness: one number drawn from the loop's generator per epoch seeds the sampler's order, the
    DataLoader workers (augmentation) and Mixup (HostRandomState), so a run seed fixes the whole epoch. The
    model starts from `model_seed` for every run.

    `synthetic=True` writes a tiny ImageFolder of random images to a temporary directory (a few dozen
    images) and trains on it: the real timm pipeline, runnable on a CPU at a small batch (the smoke
    profile's, configs/sizes/smoke_imagenet_vit.yaml).
    """

    score_name = "acc"
    higher_is_better = True
    shards_batches = True

    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    folder: str = "imagenet"
    batch_size: int = 512  # per device (rank)
    eval_batch_size: int = 512
    num_workers: int = 8
    crop_pct: float = 0.9
    train_interpolation: str = "random"
    auto_augment: str | None = "rand-m6-mstd0.5"
    mixup_alpha: float = 0.1
    cutmix_alpha: float = 1.0
    label_smoothing: float = 0.1
    bce_target_threshold: float | None = None
    train_eval_size: int = 50_000
    synthetic_n_train: int = 32
    synthetic_n_val: int = 16
    _dist: DistContext = field(default_factory=DistContext, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)
    _train_set: Dataset | None = field(default=None, init=False, repr=False)
    _sets: dict[str, Dataset] = field(default_factory=dict, init=False, repr=False)
    _source: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        # timm's batch-mode Mixup pairs each image with the batch reversed: it needs an even batch
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(
                f"Invalid batch_size: {self.batch_size} (Mixup needs an even batch >= 2)"
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"Invalid eval_batch_size: {self.eval_batch_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"Invalid crop_pct: {self.crop_pct}")
        self.model_kwargs = dict(self.model_kwargs)
        # without mixing, batches keep their class indices and the loss one-hot encodes them
        self._mixup = (
            timm.data.Mixup(
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                label_smoothing=self.label_smoothing,
                num_classes=self.num_classes,
            )
            if self.mixup_alpha > 0 or self.cutmix_alpha > 0
            else None
        )
        # as timm's train.py with --bce-loss: Mixup smooths the targets it mixes; class indices (no
        # mixing) are smoothed by the loss
        self._train_loss = timm.loss.BinaryCrossEntropy(
            smoothing=0.0 if self._mixup is not None else self.label_smoothing,
            target_threshold=self.bce_target_threshold,
        )

    @property
    def workers(self) -> int:
        # more workers than cores only adds start-up time (and a DataLoader warning)
        return min(self.num_workers, _usable_cpus())

    def setup(self, device: torch.device, dist: DistContext | None = None) -> None:
        self._device = torch.device(device)
        self._dist = dist or DistContext()
        root = self._synthetic_root() if self.synthetic else self._imagenet_root()
        data_config = timm_data_config(self.model, self.crop_pct)
        common = {
            "input_size": data_config["input_size"],
            "mean": data_config["mean"],
            "std": data_config["std"],
        }
        train_tf = timm.data.create_transform(
            **common,
            is_training=True,
            interpolation=self.train_interpolation,
            auto_augment=self.auto_augment,
        )
        eval_tf = timm.data.create_transform(
            **common,
            is_training=False,
            interpolation=data_config["interpolation"],
            crop_pct=data_config["crop_pct"],
            crop_mode=data_config["crop_mode"],
        )
        train_set = timm.data.create_dataset("", root=str(root), split="train", transform=train_tf)
        val_set = timm.data.create_dataset("", root=str(root), split="val", transform=eval_tf)
        # the train-split evaluation reads training images through the eval transform; the copy shares
        # the (large) file index with the training set
        train_eval = copy.copy(train_set)
        train_eval.transform = eval_tf
        self._train_set = train_set
        self._sets = {"train": self._fixed_subset(train_eval), "val": val_set}
        self._source = f"{'synthetic' if self.synthetic else 'folder'}:{root}"
        log.info("%s: %d train / %d val images", self._source, len(train_set), len(val_set))

    @property
    def data_info(self) -> dict:
        return {
            "dataset": "imagenet",
            "source": self._source,
            "synthetic": self.synthetic,
            "n_train": len(self._loaded()),
            "n_val": len(self._sets["val"]),
            "batch_size_per_device": self.batch_size,
            "global_batch_size": self.global_batch_size,
        }

    @property
    def global_batch_size(self) -> int:
        """The images of one optimizer step, over all ranks."""
        return self.batch_size * self._dist.world_size

    def build_model(self) -> torch.nn.Module:
        model = seeded_model(
            lambda: timm.create_model(
                self.model, pretrained=False, num_classes=self.num_classes, **self.model_kwargs
            ),
            self.model_seed,
        )
        return model.to(self._device)

    def batches_per_epoch(self) -> int:
        return len(self._loaded()) // self.global_batch_size

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        train_set = self._loaded()
        rank, world = self._dist.rank, self._dist.world_size
        # the same epoch seed on every rank (same run seed): one shared order, split by the sampler
        epoch_seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        sampler = DistributedSampler(
            train_set, num_replicas=world, rank=rank, shuffle=True, seed=epoch_seed, drop_last=True
        )
        worker_seed = epoch_seed + rank  # different augmentations on different ranks
        host_rngs = HostRandomState(worker_seed)
        loader = DataLoader(
            train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self._device.type == "cuda",
            drop_last=True,
            generator=torch.Generator().manual_seed(worker_seed),
        )
        with host_rngs:  # the workers start here and inherit the task's states
            batches = iter(loader)
        while True:
            with host_rngs:  # without workers, the transforms draw here; Mixup always does
                try:
                    images, labels = next(batches)
                except StopIteration:
                    return
                images = images.to(self._device, non_blocking=True)
                labels = labels.to(self._device, non_blocking=True)
                batch = (images, labels) if self._mixup is None else self._mixup(images, labels)
            yield batch

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        images, soft_targets = batch
        return self._train_loss(model(images), soft_targets)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        self._loaded()
        dataset = self._sets[check_split(split)]
        rank, world = self._dist.rank, self._dist.world_size
        # each rank evaluates every world-th image; the runner adds up the sums (no padding, no duplicates)
        loader = DataLoader(
            Subset(dataset, range(rank, len(dataset), world)),
            batch_size=self.eval_batch_size,
            num_workers=self.workers,
            pin_memory=self._device.type == "cuda",
        )
        return (
            (images.to(self._device, non_blocking=True), labels.to(self._device, non_blocking=True))
            for images, labels in loader
        )

    def eval_sums(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images).float()
        return {
            "loss": F.cross_entropy(logits, labels, reduction="sum").double(),
            "score": (logits.argmax(dim=1) == labels).sum().double(),
            "count": torch.full((), labels.shape[0], device=labels.device),
        }

    def _imagenet_root(self) -> Path:
        root = self.data_dir / self.folder
        paths = [root / "train", root / "val"]
        # timm's create_dataset falls back to the root when a split folder is missing: check first
        if not all(p.is_dir() for p in paths):
            raise DatasetNotFoundError("imagenet", [str(p) for p in paths], IMAGENET_HOW_TO_GET)
        return root

    def _synthetic_root(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="synthetic-imagenet-")
        root = Path(self._tmp.name)
        n_classes = min(self.num_classes, 4)
        write_synthetic_image_folder(root / "train", self.synthetic_n_train, n_classes, seed=0)
        write_synthetic_image_folder(root / "val", self.synthetic_n_val, n_classes, seed=1)
        return root

    def _fixed_subset(self, dataset: Dataset) -> Dataset:
        n = len(dataset)
        if n <= self.train_eval_size:
            return dataset
        # evenly spaced indices: a fixed subset that covers every class folder in the sorted file list
        return Subset(dataset, np.linspace(0, n - 1, self.train_eval_size).astype(int).tolist())

    def _loaded(self) -> Dataset:
        if self._train_set is None:
            raise RuntimeError("Call setup(device) before using the task's data")
        return self._train_set
