"""Image datasets as in-memory uint8 tensors, and batch-wise augmentation on tensors.

Small datasets are held whole (on the training device when the task moves them there) and batched by
indexing: per-sample `Dataset` + `DataLoader` loading measured 14x slower on CPU (ENV.md). Images stay uint8
(N, C, H, W) and are converted and normalised one batch at a time, so Imagenet32 (1.28M images, 3.9 GB as
uint8) fits on one accelerator.

Sources, per dataset:
- mnist, fashion_mnist, cifar10, cifar100: torchvision's dataset folders under `data_dir`
  (`download=True` lets torchvision fetch them);
- fashion_mnist also: the IDX files of the Debian package `dataset-fashion-mnist`;
- imagenet32: the official downsampled-ImageNet pickle batches in `data_dir/imagenet32/`.
"""

from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from experiments.data import EXPERIMENT_PLACEHOLDER, DatasetNotFoundError

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET32_URL = "https://image-net.org/download-images.php (Downsampled ImageNet 32x32)"
IMAGENET32_TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
IMAGENET32_VAL_FILE = "val_data"
DOWNLOAD_HINT = (
    f"python -m experiments.train experiment={EXPERIMENT_PLACEHOLDER} task.download=true"
)


@dataclass(frozen=True)
class DatasetSpec:
    """The shape of one dataset: image shape (C, H, W), classes and split sizes."""

    image_shape: tuple[int, int, int]
    num_classes: int
    n_train: int
    n_val: int


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec((1, 28, 28), 10, 60_000, 10_000),
    "fashion_mnist": DatasetSpec((1, 28, 28), 10, 60_000, 10_000),
    "cifar10": DatasetSpec((3, 32, 32), 10, 50_000, 10_000),
    "cifar100": DatasetSpec((3, 32, 32), 100, 50_000, 10_000),
    "imagenet32": DatasetSpec((3, 32, 32), 1000, 1_281_167, 50_000),
}


@dataclass(frozen=True)
class ImageData:
    """Both splits of an image dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    source: str
    synthetic: bool = False


def load_image_dataset(
    name: str, data_dir: str | Path, download: bool = False, device: torch.device | str = "cpu"
) -> ImageData:
    """Load dataset `name` into tensors on `device`; raises DatasetNotFoundError when it is absent."""
    loaders = {
        "mnist": _load_mnist,
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": _load_cifar,
        "cifar100": _load_cifar,
        "imagenet32": _load_imagenet32,
    }
    if name not in loaders:
        raise ValueError(f"Unknown dataset: {name!r}; known: {sorted(loaders)}")
    data = loaders[name](name, Path(data_dir).expanduser(), download, torch.device(device))
    _check_shapes(name, data)
    return data


def synthetic_image_dataset(
    name: str, n_train: int, n_val: int, seed: int = 0, device: torch.device | str = "cpu"
) -> ImageData:
    """Deterministic stand-in data with the shapes and classes of dataset `name`.

    Each class has a fixed random template and a sample is its class template blended with noise, so a
    model can learn the labels (a training step lowers the loss) while nothing real is read.
    """
    spec = DATASETS[name]
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (spec.num_classes, *spec.image_shape), generator=gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, spec.num_classes, (n,), generator=gen)
        noise = torch.randint(0, 256, (n, *spec.image_shape), generator=gen)
        images = ((templates[labels] + noise) // 2).to(torch.uint8)
        return images.to(device), labels.to(device)

    train_images, train_labels = split(n_train)
    val_images, val_labels = split(n_val)
    return ImageData(
        train_images, train_labels, val_images, val_labels, source="synthetic", synthetic=True
    )


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32, scaled to [0, 1] then standardised per channel.

    Equal to torchvision's ToTensor() followed by Normalize(mean, std); mean and std have shape (C,).
    """
    x = images.to(torch.float32).div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4
) -> torch.Tensor:
    """Per-sample random crop (zero padding `padding`) and horizontal flip of a whole batch.

    The same distribution as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip() applied to each
    image, but one gather for the batch: torchvision's v2 transforms draw one crop per call, shared by the
    batch. Random numbers come from `generator` (on its own device), so a generator state fixes the output.
    Apply it to uint8 images before `normalize`, as torchvision pads the raw image with zeros.
    """
    b, c, h, w = images.shape
    n_offsets = 2 * padding + 1
    top = torch.randint(n_offsets, (b,), generator=generator, device=generator.device)
    left = torch.randint(n_offsets, (b,), generator=generator, device=generator.device)
    flip = torch.randint(2, (b,), generator=generator, device=generator.device).bool()
    top, left, flip = (t.to(images.device) for t in (top, left, flip))

    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=images.device)
    cols = left[:, None] + torch.arange(w, device=images.device)
    # a flipped crop reads the same padded columns right to left
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=images.device)[:, None, None, None]
    channel_index = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def read_idx_gz(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format): a big-endian header, then the raw array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _check_shapes(name: str, data: ImageData) -> None:
    spec = DATASETS[name]
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.val_images, data.val_labels),
    ):
        if tuple(images.shape[1:]) != spec.image_shape or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name} from {data.source}: unexpected shape {tuple(images.shape)}")


def _from_torchvision(
    dataset_class: type, root: Path, download: bool, device: torch.device
) -> tuple[list[torch.Tensor], str] | None:
    """Both splits of a torchvision dataset as [train images, labels, val images, labels], or None."""
    tensors: list[torch.Tensor] = []
    for train in (True, False):
        try:
            ds = dataset_class(root=str(root), train=train, download=download)
        except RuntimeError:  # torchvision's "Dataset not found or corrupted"
            if download:  # a failed download is its own error, not a hint to download
                raise
            return None
        images = torch.as_tensor(ds.data)
        # MNIST-type data are (N, H, W), CIFAR (N, H, W, C): make both (N, C, H, W)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        tensors += [images.contiguous().to(device), torch.as_tensor(ds.targets).long().to(device)]
    return tensors, f"torchvision:{root}"


def _load_mnist(name: str, root: Path, download: bool, device: torch.device) -> ImageData:
    found = _from_torchvision(torchvision.datasets.MNIST, root, download, device)
    if found is None:
        raise DatasetNotFoundError(
            name, [str(root / "MNIST" / "raw")], f"{DOWNLOAD_HINT} (torchvision downloads MNIST)"
        )
    tensors, source = found
    return ImageData(*tensors, source=source)


def _load_fashion_mnist(name: str, root: Path, download: bool, device: torch.device) -> ImageData:
    # a copy under data_dir wins; then the Debian package; torchvision downloads only when allowed
    found = _from_torchvision(torchvision.datasets.FashionMNIST, root, False, device)
    if found is None and _debian_fashion_mnist_present():
        return _load_debian_fashion_mnist(device)
    if found is None and download:
        found = _from_torchvision(torchvision.datasets.FashionMNIST, root, True, device)
    if found is None:
        raise DatasetNotFoundError(
            name,
            [str(root / "FashionMNIST" / "raw"), str(DEBIAN_FASHION_MNIST_DIR)],
            f"apt-get install dataset-fashion-mnist (Debian files in {DEBIAN_FASHION_MNIST_DIR}), "
            f"or {DOWNLOAD_HINT}",
        )
    tensors, source = found
    return ImageData(*tensors, source=source)


_DEBIAN_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _debian_fashion_mnist_present() -> bool:
    return all((DEBIAN_FASHION_MNIST_DIR / f).is_file() for f in _DEBIAN_FILES)


def _load_debian_fashion_mnist(device: torch.device) -> ImageData:
    arrays = [read_idx_gz(DEBIAN_FASHION_MNIST_DIR / f) for f in _DEBIAN_FILES]
    train_images, train_labels, val_images, val_labels = (
        torch.from_numpy(a.copy()) for a in arrays
    )
    return ImageData(
        train_images.unsqueeze(1).to(device),
        train_labels.long().to(device),
        val_images.unsqueeze(1).to(device),
        val_labels.long().to(device),
        source=f"debian:{DEBIAN_FASHION_MNIST_DIR}",
    )


def _load_cifar(name: str, root: Path, download: bool, device: torch.device) -> ImageData:
    dataset_class = (
        torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    )
    found = _from_torchvision(dataset_class, root, download, device)
    if found is None:
        raise DatasetNotFoundError(
            name, [str(root / dataset_class.base_folder)], f"{DOWNLOAD_HINT} (torchvision)"
        )
    tensors, source = found
    return ImageData(*tensors, source=source)


def _load_imagenet32(name: str, root: Path, download: bool, device: torch.device) -> ImageData:
    folder = root / "imagenet32"
    paths = [folder / f for f in (*IMAGENET32_TRAIN_FILES, IMAGENET32_VAL_FILE)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            name,
            missing,
            f"download Imagenet32_train.zip and Imagenet32_val.zip (pickle format) from "
            f"{IMAGENET32_URL} and unzip them so that {folder} holds "
            f"{', '.join(IMAGENET32_TRAIN_FILES[:2])}, ..., {IMAGENET32_TRAIN_FILES[-1]} and "
            f"{IMAGENET32_VAL_FILE} (no automatic download: the files need an image-net.org login)",
        )
    train = [_read_imagenet32_batch(p, device) for p in paths[:-1]]
    val_images, val_labels = _read_imagenet32_batch(paths[-1], device)
    return ImageData(
        torch.cat([images for images, _ in train]),
        torch.cat([labels for _, labels in train]),
        val_images,
        val_labels,
        source=f"imagenet32:{folder}",
    )


def _read_imagenet32_batch(path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One official pickle batch: 'data' uint8 (N, 3072) in CHW order, 'labels' 1-based."""
    log.info("reading %s", path)
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.ascontiguousarray(entry["data"], dtype=np.uint8))
    labels = torch.as_tensor(np.asarray(entry["labels"], dtype=np.int64)) - 1
    # move each batch on arrival so the host never holds two copies of the whole set
    return images.view(-1, 3, 32, 32).to(device), labels.to(device)
