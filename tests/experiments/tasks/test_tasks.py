"""Tasks: configs, data, batching, augmentation, loss and evaluation (docs/design.md §2)."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toy_task import evaluate
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from experiments.data import DatasetNotFoundError
from experiments.data import images as data
from experiments.data.images import normalize, random_crop_flip, read_idx_gz
from experiments.models import mlp
from experiments.tasks import Task
from experiments.tasks.classification import ImageClassification

TASK_CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "task"
EXPECTED_TASKS = [
    "cifar100_resnet110",
    "cifar10_resnet20",
    "cifar10_vgg16",
    "cifar10_vit",
    "fashion_mnist_mlp",
    "imagenet32_resnet18",
    "mnist_mlp",
    "synthetic_ls",
]


def test_task_configs_cover_the_paper_experiments() -> None:
    assert {p.stem for p in TASK_CONFIG_DIR.glob("*.yaml")} >= set(EXPECTED_TASKS)


def _loss_at_fixed_dropout(task: Task, model: torch.nn.Module, batch) -> torch.Tensor:
    # the same dropout masks before and after the step: the step is compared on one function
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return task.loss(model, batch)


@pytest.mark.parametrize("name", EXPECTED_TASKS)
def test_task_config_instantiates_and_a_step_lowers_the_loss(make_task, name) -> None:
    task = make_task(name, batch_size=8)
    task.setup(torch.device("cpu"))
    info = task.data_info
    assert set(info) == {"dataset", "source", "synthetic", "n_train", "n_val"}
    assert info["synthetic"] is True
    assert task.batches_per_epoch() == info["n_train"] // 8

    model = task.build_model()
    model.train()
    batch = next(task.train_batches(torch.Generator().manual_seed(1)))
    assert batch[0].shape[0] == 8 and batch[0].dtype == torch.float32
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = _loss_at_fixed_dropout(task, model, batch)
    assert before.ndim == 0
    before.backward()
    optimizer.step()
    after = _loss_at_fixed_dropout(task, model, batch)
    assert after.item() < before.item()


@pytest.mark.parametrize(
    ("name", "shape"), [("mnist_mlp", (1, 28, 28)), ("cifar10_vit", (3, 32, 32))]
)
def test_synthetic_stand_in_has_the_dataset_shapes_and_is_deterministic(make_task, name, shape):
    task = make_task(name, batch_size=16)
    task.setup(torch.device("cpu"))
    other = make_task(name, batch_size=16)
    other.setup(torch.device("cpu"))
    # at least two batches even when the batch is larger than the default stand-in size
    assert make_task(name, batch_size=512).batch_size == 512
    images, labels = next(task.train_batches(torch.Generator().manual_seed(3)))
    images2, labels2 = next(other.train_batches(torch.Generator().manual_seed(3)))
    assert images.shape == (16, *shape)
    assert torch.equal(images, images2) and torch.equal(labels, labels2)
    assert task.data_info["n_train"] == 256 and task.data_info["n_val"] == 128


def test_synthetic_stand_in_grows_to_two_batches(make_task) -> None:
    task = make_task("cifar10_vit", batch_size=300)
    task.setup(torch.device("cpu"))
    assert task.data_info["n_train"] == 600
    assert task.batches_per_epoch() == 2


@pytest.mark.parametrize(
    ("drop_last", "expected_sizes"), [(True, [100, 100]), (False, [100, 100, 50])]
)
def test_train_batches_drop_last_agrees_with_batches_per_epoch(
    make_task, drop_last, expected_sizes
):
    task = make_task("mnist_mlp", batch_size=100, drop_last=drop_last, synthetic_n_train=250)
    task.setup(torch.device("cpu"))
    sizes = [x.shape[0] for x, _ in task.train_batches(torch.Generator().manual_seed(0))]
    assert sizes == expected_sizes
    assert task.batches_per_epoch() == len(expected_sizes)


def test_train_batches_are_a_permutation_fixed_by_the_generator(make_task) -> None:
    task = make_task("mnist_mlp", batch_size=64, drop_last=False)
    task.setup(torch.device("cpu"))

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(task.train_batches(torch.Generator().manual_seed(seed)))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    images, labels = epoch(0)
    again, _ = epoch(0)
    other, _ = epoch(1)
    assert torch.equal(images, again)
    assert not torch.equal(images, other)
    # every training image exactly once, with its label
    reference = task._data  # the loaded tensors are the ground truth
    expected = normalize(reference.train_images, task._mean, task._std)
    key = images.flatten(1).sum(1) * 1000 + labels
    expected_key = expected.flatten(1).sum(1) * 1000 + reference.train_labels
    assert torch.allclose(key.sort().values, expected_key.sort().values)


def _matching_crops(original: torch.Tensor, output: torch.Tensor, padding: int) -> list[tuple]:
    """Every (top, left, flipped) for which torchvision's pad + crop (+ hflip) gives `output`."""
    h, w = original.shape[-2:]
    padded = TF.pad(original, [padding])
    matches = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, h, w)
            for flipped, candidate in ((False, crop), (True, TF.horizontal_flip(crop))):
                if torch.equal(candidate, output):
                    matches.append((top, left, flipped))
    return matches


def test_random_crop_flip_gives_torchvision_crops_and_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=gen, dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(5), padding=4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    params = [_matching_crops(images[i], out[i], padding=4) for i in range(len(images))]
    assert all(len(p) == 1 for p in params)
    drawn = [p[0] for p in params]
    assert {flipped for _, _, flipped in drawn} == {False, True}
    assert len({(top, left) for top, left, _ in drawn}) > 20  # offsets differ per sample


def test_random_crop_flip_is_fixed_by_the_generator() -> None:
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(images, torch.Generator().manual_seed(1))
    again = random_crop_flip(images, torch.Generator().manual_seed(1))
    other = random_crop_flip(images, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augmented_train_batches_keep_shapes(make_task) -> None:
    task = make_task("cifar10_resnet20", batch_size=32)
    task.setup(torch.device("cpu"))
    assert task.augment
    images, labels = next(task.train_batches(torch.Generator().manual_seed(0)))
    assert images.shape == (32, 3, 32, 32) and labels.shape == (32,)


def test_normalize_matches_torchvision() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    expected = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), mean, std)
    actual = normalize(images, torch.tensor(mean), torch.tensor(std))
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def test_build_model_is_the_same_for_every_run_and_keeps_the_global_rng(make_task) -> None:
    task = make_task("cifar10_resnet20")
    task.setup(torch.device("cpu"))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = task.build_model().state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    second = task.build_model().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    third = make_task("cifar10_resnet20", model_seed=7).build_model().state_dict()
    assert not torch.equal(first["conv1.weight"], third["conv1.weight"])


def test_evaluate_returns_mean_loss_and_accuracy_over_the_split(make_task) -> None:
    task = make_task("mnist_mlp", eval_batch_size=50)
    task.setup(torch.device("cpu"))
    model = task.build_model()
    result = evaluate(task, model, "val")
    reference = task._data
    with torch.no_grad():
        logits = model.eval()(normalize(reference.val_images, task._mean, task._std))
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, reference.val_labels).item())
    accuracy = (logits.argmax(1) == reference.val_labels).float().mean().item()
    assert result["score"] == pytest.approx(accuracy)
    assert 0.0 <= result["score"] <= 1.0
    with pytest.raises(ValueError, match="split"):
        task.eval_batches("test")


def test_eval_sums_are_0_dim_tensors_of_one_batch(make_task) -> None:
    for name in ("mnist_mlp", "synthetic_ls"):
        task = make_task(name)
        task.setup(torch.device("cpu"))
        batch = next(task.eval_batches("val"))
        sums = task.eval_sums(task.build_model().eval(), batch)
        assert {"loss", "score", "count"} <= set(sums), name
        assert all(torch.is_tensor(v) and v.ndim == 0 for v in sums.values()), name
        assert sums["count"].item() == batch[1].shape[0], name


def test_evaluate_stops_at_max_eval_batches(make_task) -> None:
    task = make_task("mnist_mlp", eval_batch_size=32)
    task.setup(torch.device("cpu"))
    model = task.build_model().eval()
    reference = task._data
    with torch.no_grad():
        logits = model(normalize(reference.train_images[:32], task._mean, task._std))
    expected = F.cross_entropy(logits, reference.train_labels[:32]).item()
    assert evaluate(task, model, "train", max_batches=1)["loss"] == pytest.approx(expected)


def test_evaluate_of_augmented_train_set_is_deterministic(make_task) -> None:
    task = make_task("cifar10_resnet20", eval_batch_size=64)
    task.setup(torch.device("cpu"))
    assert task.augment_train_eval
    model = task.build_model()
    first, second = (evaluate(task, model, "train", max_batches=1) for _ in range(2))
    assert first == second
    clean = make_task("cifar10_resnet20", eval_batch_size=64, augment_train_eval=False)
    clean.setup(torch.device("cpu"))
    assert evaluate(clean, model, "train", max_batches=1)["loss"] != first["loss"]


def test_image_classification_rejects_invalid_fields() -> None:
    fields = {
        "dataset": "cifar10",
        "model": mlp,
        "batch_size": 8,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    assert ImageClassification(**fields).dataset == "cifar10"
    with pytest.raises(ValueError, match="channels"):
        ImageClassification(**{**fields, "mean": [0.5], "std": [0.5]})
    with pytest.raises(ValueError, match="Unknown dataset"):
        ImageClassification(**{**fields, "dataset": "svhn"})
    with pytest.raises(ValueError, match="Invalid batch_size"):
        ImageClassification(**{**fields, "batch_size": 0})


@pytest.mark.parametrize(
    ("name", "expected_paths", "command"),
    [
        ("mnist_mlp", ["data/MNIST/raw"], "task.download=true"),
        (
            "fashion_mnist_mlp",
            ["data/FashionMNIST/raw", "debian"],
            "apt-get install dataset-fashion-mnist",
        ),
        ("cifar10_resnet20", ["data/cifar-10-batches-py"], "task.download=true"),
        ("cifar100_resnet110", ["data/cifar-100-python"], "task.download=true"),
        (
            "imagenet32_resnet18",
            ["data/imagenet32/train_data_batch_1", "data/imagenet32/val_data"],
            "image-net.org",
        ),
    ],
)
def test_missing_dataset_error_names_the_paths_and_how_to_get_it(
    make_task, monkeypatch, tmp_path, name, expected_paths, command
) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    task = make_task(name, synthetic=False)  # data_dir is tmp_path / "data", empty
    with pytest.raises(DatasetNotFoundError) as error:
        task.setup(torch.device("cpu"))
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert repr(task.dataset) in message
    for path in expected_paths:
        assert str(tmp_path / path) in message
    assert command in message


def test_imagenet32_loader_reads_the_official_pickle_layout(tmp_path) -> None:
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [*data.IMAGENET32_TRAIN_FILES, data.IMAGENET32_VAL_FILE]:
        entry = {
            "data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
            "labels": [1, 500, 1000],  # 1-based, as in the official files
        }
        batches[name] = entry
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    loaded = data.load_image_dataset("imagenet32", tmp_path)
    assert loaded.train_images.shape == (30, 3, 32, 32) and loaded.train_images.dtype == torch.uint8
    assert loaded.val_images.shape == (3, 3, 32, 32)
    assert loaded.train_labels.tolist()[:3] == [0, 499, 999]
    first = batches["train_data_batch_1"]["data"][0]
    # rows are channel-major: 1024 red values, then green, then blue
    assert loaded.train_images[0, 1].flatten().tolist() == first[1024:2048].tolist()
    last = batches["train_data_batch_10"]["data"][2]
    assert loaded.train_images[-1].flatten().tolist() == last.tolist()


def test_read_idx_gz_reads_the_mnist_format(tmp_path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + array.tobytes()))
    assert np.array_equal(read_idx_gz(path), array)
    path.write_bytes(gzip.compress(b"\x00\x01\x08\x01" + bytes(8)))
    with pytest.raises(ValueError, match="IDX"):
        read_idx_gz(path)


@pytest.mark.skipif(
    not data._debian_fashion_mnist_present(),
    reason=f"Fashion-MNIST files absent from {data.DEBIAN_FASHION_MNIST_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist_loader_reads_the_full_dataset(tmp_path) -> None:
    loaded = data.load_image_dataset("fashion_mnist", tmp_path / "empty")
    assert loaded.source.startswith("debian:")
    assert loaded.train_images.shape == (60_000, 1, 28, 28)
    assert loaded.val_images.shape == (10_000, 1, 28, 28)
    assert loaded.train_images.dtype == torch.uint8
    for labels in (loaded.train_labels, loaded.val_labels):
        assert labels.min().item() == 0 and labels.max().item() == 9
        assert torch.bincount(labels).min().item() > 0


def test_least_squares_has_a_known_zero_optimum(make_task) -> None:
    task = make_task("synthetic_ls", synthetic=False)
    task.setup(torch.device("cpu"))
    assert (task.score_name, task.higher_is_better, task.optimal_value) == ("mse", False, 0.0)
    assert task.batches_per_epoch() == 10
    model = task.build_model()
    assert evaluate(task, model, "train")["loss"] > 1e-2
    a, b = task._splits["train"]
    solution = torch.linalg.lstsq(a.double(), b.double()).solution
    with torch.no_grad():
        model.weight.copy_(solution.float().view(1, -1))
    result = evaluate(task, model, "train")
    assert result["loss"] < 1e-8 and result["score"] == result["loss"]
    assert evaluate(task, model, "val")["loss"] < 1e-8  # same w*, fresh samples
    assert task.data_info["synthetic"] is False


def test_least_squares_evaluation_stops_at_max_eval_batches(make_task) -> None:
    task = make_task("synthetic_ls", eval_batch_size=50)
    task.setup(torch.device("cpu"))
    model = task.build_model()
    a, b = task._splits["val"]
    with torch.no_grad():
        first_fifty = F.mse_loss(model(a[:50]).flatten(), b[:50]).item()
        whole = F.mse_loss(model(a).flatten(), b).item()
    assert evaluate(task, model, "val", max_batches=1)["loss"] == pytest.approx(first_fifty)
    assert evaluate(task, model, "val")["loss"] == pytest.approx(whole)
    assert first_fifty != pytest.approx(whole)


def test_least_squares_batches_are_shuffled_by_the_generator(make_task) -> None:
    task = make_task("synthetic_ls")
    task.setup(torch.device("cpu"))
    first = [b for _, b in task.train_batches(torch.Generator().manual_seed(0))]
    again = [b for _, b in task.train_batches(torch.Generator().manual_seed(0))]
    other = [b for _, b in task.train_batches(torch.Generator().manual_seed(1))]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(other))
    assert torch.cat(first).sort().values.equal(task._splits["train"][1].sort().values)


def test_task_setup_is_required_before_data_access(make_task) -> None:
    task = make_task("mnist_mlp")
    with pytest.raises(RuntimeError, match="setup"):
        task.data_info  # noqa: B018
    assert isinstance(task, Task)
    assert Path(task.data_dir).name == "data"


@pytest.mark.parametrize("name", [*EXPECTED_TASKS, "imagenet_vit", "diffusion", "criteo_dlrm"])
def test_task_is_a_keyword_only_dataclass_of_its_config(name) -> None:
    cfg = OmegaConf.load(TASK_CONFIG_DIR / f"{name}.yaml")
    task_class = hydra.utils.get_class(cfg._target_)
    assert dataclasses.is_dataclass(task_class) and issubclass(task_class, Task)
    fields = {f.name: f for f in dataclasses.fields(task_class) if f.init}
    assert all(f.kw_only for f in fields.values())
    config_keys = {k for k in cfg if not k.startswith("_")}
    assert config_keys <= set(fields), config_keys - set(fields)  # every config key is a field
    assert not {f for f in fields if f.startswith("max_")}  # batch caps belong to the runner
