"""The DDPM denoising task (diffusers): training steps, the fixed-noise metric, data sources, samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _toy_task import compose_config, evaluate
from PIL import Image

from experiments.data import DatasetNotFoundError
from experiments.data import images as data
from experiments.runner import train
from experiments.runner.sweep import load_sweep
from experiments.tasks.diffusion import DDPMDenoising
from momo import MomoAdam

# two levels, attention at the second: the recipe's structure at a test's size
TINY_UNET = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny(**overrides: object) -> DDPMDenoising:
    kwargs = {
        "dataset": "butterflies",
        "unet": TINY_UNET,
        "image_size": 16,
        "batch_size": 4,
        "synthetic": True,
        "synthetic_n_train": 16,
        "synthetic_n_val": 8,
    }
    task = DDPMDenoising(**{**kwargs, **overrides})
    task.setup(torch.device("cpu"))
    return task


def test_ddpm_denoising_trains_on_synthetic_data_with_momo_adam() -> None:
    task = _tiny()
    assert task.data_info["synthetic"] is True and task.data_info["n_val"] == 8
    assert (task.score_name, task.higher_is_better) == ("mse", False)
    model = task.build_model()
    opt = MomoAdam(model.parameters(), lr=1e-2)

    losses = []
    for batch in task.train_batches(torch.Generator().manual_seed(0)):
        clean, noise, timesteps = batch
        assert clean.shape == noise.shape == (4, 3, 16, 16)
        assert clean.min() >= -1.0 and clean.max() <= 1.0
        assert timesteps.shape == (4,) and timesteps.min() >= 0 and timesteps.max() < 1000
        opt.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    assert len(losses) == task.batches_per_epoch() == 4
    assert all(math.isfinite(v) and v > 0 for v in losses)

    result = evaluate(task, model, "val")
    assert result["loss"] == result["score"]
    assert 0.0 < result["score"] < 10.0  # noise has unit variance: an untrained net is near 1


def test_ddpm_denoising_metric_is_deterministic_across_calls_and_runs() -> None:
    task = _tiny()
    model = task.build_model()
    first = evaluate(task, model, "val")["score"]
    assert evaluate(task, model, "val")["score"] == first
    # a fresh task (another run) holds the same held-out noise and timesteps
    assert evaluate(_tiny(), model, "val")["score"] == first
    # and the metric sees the model: a change of weights changes it
    with torch.no_grad():
        model.conv_out.bias.add_(0.5)
    assert evaluate(task, model, "val")["score"] != first


def test_ddpm_denoising_batches_are_a_function_of_the_generator() -> None:
    task = _tiny()

    def first(seed: int) -> tuple[torch.Tensor, ...]:
        return next(iter(task.train_batches(torch.Generator().manual_seed(seed))))

    for a, b in zip(first(0), first(0), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first(0)[1], first(1)[1])


def test_ddpm_denoising_reads_and_splits_an_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "flowers" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):  # mixed sizes and modes: everything is resized to 16 x 16 RGB
        pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if i % 3 == 0 else image).save(folder / f"{i}.png")
    task = DDPMDenoising(
        dataset="flowers", unet=TINY_UNET, image_size=16, batch_size=4, n_val=4, data_dir=tmp_path
    )
    task.setup(torch.device("cpu"))
    info = task.data_info
    assert (info["n_train"], info["n_val"], info["synthetic"]) == (8, 4, False)
    assert info["source"] == f"folder:{tmp_path / 'flowers'}"
    clean, _, _ = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    assert clean.shape == (4, 3, 16, 16)


def test_ddpm_denoising_missing_folder_names_path_and_preparation(tmp_path: Path) -> None:
    task = DDPMDenoising(dataset="butterflies", unet=TINY_UNET, image_size=16, data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        task.setup(torch.device("cpu"))
    message = str(excinfo.value)
    assert str(tmp_path / "butterflies") in message
    assert "huggan/smithsonian_butterflies_subset" in message


@pytest.mark.skipif(
    not data._debian_fashion_mnist_present(), reason="apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_diffusion_pads_the_real_images_to_32(make_task) -> None:
    task = make_task("fashion_mnist_diffusion", synthetic=False)
    task.setup(torch.device("cpu"))
    info = task.data_info
    assert (info["n_train"], info["n_val"], info["synthetic"]) == (60_000, 10_000, False)
    clean, _, _ = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    assert clean.shape == (128, 1, 32, 32)
    # the 2-pixel frame is padding: black, i.e. -1 in the model's range
    frame = torch.cat([clean[..., :2, :].flatten(), clean[..., -2:, :].flatten()])
    assert torch.all(frame == -1.0)
    assert clean[..., 2:-2, 2:-2].max() > 0.0


def test_ddpm_denoising_on_train_end_saves_a_sample_grid(tmp_path: Path) -> None:
    task = _tiny(n_samples=4, sample_steps=3)
    model = task.build_model().eval()
    path = task.on_train_end(model, tmp_path)
    assert path == tmp_path / "samples.png"
    with Image.open(path) as grid:
        # 2 x 2 images of 16 px with torchvision's 2 px padding
        assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)


@pytest.mark.parametrize("name", ["diffusion", "fashion_mnist_diffusion"])
def test_diffusion_task_configs_build_the_recipe_shapes(make_task, name: str) -> None:
    task = make_task(name, synthetic=False)
    assert isinstance(task, DDPMDenoising)
    assert task.noise_scheduler.config.num_train_timesteps == 1000
    assert isinstance(task.unet["block_out_channels"], list)  # _convert_: plain containers
    if name == "diffusion":
        assert (task.image_size, task.batch_size) == (128, 16)
        assert task.unet["block_out_channels"] == [128, 128, 256, 256, 512, 512]
        assert task.unet["down_block_types"][4] == "AttnDownBlock2D"
    else:
        assert (task.image_size, task.channels, task.pad) == (32, 1, 2)


def test_smoke_profile_makes_the_diffusion_recipe_cpu_sized() -> None:
    smoke = compose_config("experiment=diffusion", "profile=smoke")
    assert (smoke.task.batch_size, smoke.task.image_size, smoke.task.sample_steps) == (2, 32, 2)
    full = compose_config("experiment=diffusion")
    assert (full.task.batch_size, full.task.image_size, full.task.sample_steps) == (16, 128, 1000)
    overridden = compose_config("experiment=diffusion", "profile=smoke", "task.batch_size=3")
    assert overridden.task.batch_size == 3  # the command line still wins


@pytest.mark.parametrize("name", ["diffusion", "fashion_mnist_diffusion"])
def test_diffusion_sweeps_compare_adamw_and_momo_adam(name: str) -> None:
    blocks = load_sweep(name)
    assert {b.optimizer for b in blocks} == {"adamw", "momo_adam"}
    assert all(len(b.params["optimizer.lr"]) >= 5 for b in blocks)


def _smoke_record(tmp_path: Path, experiment: str, *overrides: str) -> dict:
    cfg = compose_config(
        f"experiment={experiment}", "profile=smoke", f"results_dir={tmp_path}", *overrides
    )
    info = train.train(cfg)
    assert info["status"] == "completed", info["error"]
    assert (info["score_name"], info["higher_is_better"]) == ("mse", False)
    assert info["data"]["synthetic"] is True and info["profile"] == "smoke"
    assert all(math.isfinite(info["final"][k]) for k in ("train/loss", "val/loss", "val/score"))
    return info


def test_fashion_mnist_diffusion_smoke_run_writes_a_record(tmp_path: Path) -> None:
    info = _smoke_record(tmp_path, "fashion_mnist_diffusion", "optimizer=momo_adam")
    assert info["epochs_done"] == 2 and info["data"]["image_size"] == 32


@pytest.mark.slow
def test_diffusion_smoke_run_writes_a_record(tmp_path: Path) -> None:
    # the recipe's 114M-parameter UNet, at the smoke profile's 32 px and batch 2
    info = _smoke_record(tmp_path, "diffusion", "optimizer=momo_adam")
    assert info["data"]["batch_size"] == 2 and info["data"]["image_size"] == 32
