"""The ImageNet ViT task (timm): its real data pipeline on a generated ImageFolder, on the CPU."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _toy_task import compose_config, evaluate
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.data import DatasetNotFoundError
from experiments.runner import loop, train
from experiments.runner.distributed import DistContext
from experiments.runner.sweep import load_sweep
from experiments.tasks.imagenet_vit import TimmImageNet, write_synthetic_image_folder
from momo import MomoAdam

# one transformer block: the pipeline and the 224 px shapes are real, the step is cheap
TINY = {"model_kwargs": {"depth": 1}, "num_workers": 0, "batch_size": 8, "eval_batch_size": 16}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_timm_imagenet_trains_on_synthetic_folder_with_momo_adam(make_task) -> None:
    task = make_task("imagenet_vit", **TINY)
    task.setup(torch.device("cpu"))
    assert task.data_info["synthetic"] is True
    assert (task.data_info["n_train"], task.data_info["n_val"]) == (32, 16)
    model = task.build_model()
    opt = MomoAdam(model.parameters(), lr=1e-3)

    losses = []
    for i, batch in enumerate(task.train_batches(torch.Generator().manual_seed(0))):
        images, targets = batch
        assert images.shape == (8, 3, 224, 224)
        # mixed soft targets over the 1000 classes
        assert targets.shape == (8, 1000)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
        opt.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
        if i == 1:
            break
    assert all(math.isfinite(v) and v > 0 for v in losses)

    result = evaluate(task, model, "val")
    assert set(result) == {"loss", "score"}
    assert 0.0 <= result["score"] <= 1.0 and 0.0 < result["loss"] < 20.0


def test_timm_imagenet_mixup_smooths_the_mixed_targets(make_task) -> None:
    """timm's train.py recipe: Mixup/CutMix with label smoothing 0.1. Every class but a row's two mixed
    labels gets the smoothing's off value 0.1 / 1000; the two labels share the rest in the proportion
    lam : 1 - lam, with one lam per batch."""
    task = make_task("imagenet_vit", **TINY)
    task.setup(torch.device("cpu"))
    _, targets = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    off = 0.1 / 1000
    on = 1.0 - 0.1 + off
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    top2, _ = targets.topk(2, dim=1)
    rest = targets.sort(dim=1).values[:, :-2]
    torch.testing.assert_close(rest, torch.full_like(rest, off))
    assert (top2 <= on + 1e-6).all()
    # rows whose two labels differ hold lam * on + (1 - lam) * off and the converse: one lam per batch
    mixed = top2[top2[:, 1] > off + 1e-6]
    assert len(mixed) > 0
    lam = (mixed[:, 0] - off) / (on - off)
    torch.testing.assert_close(lam, lam[:1].expand_as(lam))
    torch.testing.assert_close(mixed.sum(dim=1), torch.full((len(mixed),), on + off))


def test_timm_imagenet_loss_is_bce_on_the_soft_targets(make_task) -> None:
    """No BCE target threshold (timm train.py's default): the loss is the mean binary cross-entropy
    against the smoothed, mixed targets themselves, not against targets binarised at a threshold."""
    task = make_task("imagenet_vit", **TINY)
    task.setup(torch.device("cpu"))
    batch = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    _, targets = batch
    logits = 4.0 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(1))
    loss = task.loss(lambda images: logits, batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(loss, bce(logits, targets))
    # the A3 recipe's threshold, for contrast: binarised targets, another loss
    a3 = make_task("imagenet_vit", **TINY, bce_target_threshold=0.2)
    binarised = a3.loss(lambda images: logits, batch)
    torch.testing.assert_close(binarised, bce(logits, (targets > 0.2).float()))
    assert not torch.isclose(loss, binarised, rtol=1e-5, atol=0.0)


def test_timm_imagenet_batch_size_is_per_device_and_the_global_batch_is_recorded(make_task) -> None:
    """Under a (simulated) world of 4 ranks, rank 1 reads batches of its own batch_size; an epoch has
    n_train // (batch_size * 4) steps, and data_info (run.json's `data`) records both batch sizes."""
    task = make_task("imagenet_vit", **{**TINY, "batch_size": 2})
    task.setup(torch.device("cpu"), DistContext(rank=1, world_size=4))
    info = task.data_info
    assert (info["batch_size_per_device"], info["global_batch_size"]) == (2, 8)
    assert task.batches_per_epoch() == 32 // 8
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert [images.shape[0] for images, _ in batches] == [2, 2, 2, 2]
    task.setup(torch.device("cpu"))  # one process: the global batch is the per-device one
    assert task.data_info["global_batch_size"] == 2 and task.batches_per_epoch() == 16


def test_imagenet_vit_run_is_built_with_the_authors_timm_recipe(tmp_path: Path) -> None:
    """The experiment config through the runner's build_run: fp32, timm's two weight-decay param groups,
    the warmup from lr 1e-5, Mixup's label smoothing 0.1 and BCE without a target threshold."""
    cfg = compose_config("experiment=imagenet_vit", "profile=smoke", f"results_dir={tmp_path}")
    run = train.build_run(cfg, DistContext())
    assert cfg.amp == "none" and run.autocast is contextlib.nullcontext
    decayed, exempt = run.optimizer.param_groups
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.02, 0.0)
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert [group["lr"] for group in run.optimizer.param_groups] == pytest.approx([1e-5, 1e-5])
    assert run.task._mixup.label_smoothing == 0.1
    assert run.task._train_loss.target_threshold is None
    assert run.task.auto_augment == "rand-m6-mstd0.5" and run.task.train_interpolation == "random"


def test_timm_imagenet_epoch_is_a_function_of_the_generator(make_task) -> None:
    # workers: augmentation runs in DataLoader processes seeded from the generator
    task = make_task("imagenet_vit", **{**TINY, "num_workers": 2})
    task.setup(torch.device("cpu"))

    def first_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(task.train_batches(torch.Generator().manual_seed(seed))))

    a_images, a_targets = first_batch(0)
    b_images, b_targets = first_batch(0)
    c_images, _ = first_batch(1)
    assert torch.equal(a_images, b_images) and torch.equal(a_targets, b_targets)
    assert not torch.equal(a_images, c_images)


def test_timm_imagenet_evaluation_is_plain_cross_entropy_on_unmixed_images(make_task) -> None:
    task = make_task("imagenet_vit", **TINY)
    task.setup(torch.device("cpu"))
    model = task.build_model().eval()
    images, labels = zip(*(task._sets["val"][i] for i in range(16)), strict=True)
    with torch.no_grad():
        logits = model(torch.stack(images))
    labels = torch.tensor(labels)
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    expected_acc = (logits.argmax(1) == labels).float().mean().item()

    result = evaluate(task, model, "val")
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["score"] == pytest.approx(expected_acc)


def test_timm_imagenet_model_init_is_fixed_and_leaves_the_global_rng_alone(make_task) -> None:
    task = make_task("imagenet_vit", **TINY)
    task.setup(torch.device("cpu"))
    torch.manual_seed(0)
    first = task.build_model()
    after = torch.rand(1)
    torch.manual_seed(0)
    second = task.build_model()
    assert torch.equal(torch.rand(1), after)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)


def test_timm_imagenet_missing_folder_names_paths_and_preparation(tmp_path: Path) -> None:
    (tmp_path / "imagenet" / "train").mkdir(parents=True)  # val is missing
    task = TimmImageNet(data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        task.setup(torch.device("cpu"))
    message = str(excinfo.value)
    assert str(tmp_path / "imagenet" / "val") in message
    assert "ILSVRC2012_img_train.tar" in message and "valprep" in message


def test_timm_imagenet_reads_a_real_imagefolder(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_synthetic_image_folder(root / "train", 6, n_classes=3, seed=0)
    write_synthetic_image_folder(root / "val", 4, n_classes=3, seed=1)
    task = TimmImageNet(data_dir=tmp_path, batch_size=2, num_workers=0)
    task.setup(torch.device("cpu"))
    info = task.data_info
    assert (info["n_train"], info["n_val"], info["synthetic"]) == (6, 4, False)
    assert info["source"] == f"folder:{root}"
    assert task.batches_per_epoch() == 3


def test_timm_imagenet_rejects_an_odd_batch() -> None:
    with pytest.raises(ValueError, match="even batch"):
        TimmImageNet(batch_size=7)


def test_imagenet_vit_sweep_couples_weight_decay_to_lr() -> None:
    blocks = load_sweep("imagenet_vit")
    assert {b.optimizer for b in blocks} == {"adamw", "momo_adam"}
    pairs = sorted(
        (b.params["optimizer.lr"][0], b.params["optimizer.weight_decay"][0]) for b in blocks
    )
    assert sorted({lr for lr, _ in pairs}) == [1e-3, 5e-3, 1e-2, 2e-2]
    for lr, wd in pairs:
        assert lr * wd == pytest.approx(1e-4)
    assert all(b.params["seed"] == [0, 1, 2] for b in blocks)


def test_imagenet_vit_task_config_builds_the_timm_task(tmp_path: Path) -> None:
    cfg = OmegaConf.load(Path(__file__).resolve().parents[3] / "configs/task/imagenet_vit.yaml")
    task = instantiate(cfg, data_dir=str(tmp_path), synthetic=False)
    assert isinstance(task, TimmImageNet)
    assert (task.model, task.batch_size, task.crop_pct) == ("vit_tiny_patch16_224", 512, 0.9)


@pytest.mark.slow
def test_imagenet_vit_smoke_run_writes_a_record(tmp_path: Path) -> None:
    # the smoke profile has 2 epochs: fewer than the 5 warmup epochs that warmup_cosine accepts
    cfg = compose_config(
        "experiment=imagenet_vit", "profile=smoke", "schedule.warmup=1", f"results_dir={tmp_path}"
    )
    info = train.train(cfg)
    assert info["status"] == "completed", info["error"]
    assert info["data"]["synthetic"] is True and info["epochs_done"] == 2
    assert (info["data"]["batch_size_per_device"], info["data"]["global_batch_size"]) == (8, 8)
    assert info["device"]["amp"] == "none"
    assert 0.0 <= info["final"]["val/score"] <= 1.0 and math.isfinite(info["final"]["train/loss"])


def _data_parallel_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        task = TimmImageNet(synthetic=True, **TINY)
        ctx = DistContext(rank=rank, world_size=2)
        task.setup(torch.device("cpu"), ctx)
        images, targets = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
        model = task.build_model().eval()
        with torch.no_grad():
            result = loop.evaluate_split(task, model, "val", ctx=ctx)
        batch = {
            "global_batch": task.data_info["global_batch_size"],
            "steps": task.batches_per_epoch(),
        }
        torch.save(
            {"images": images, "targets": targets, **result, **batch}, f"{out_dir}/rank{rank}.pt"
        )
        dist.barrier()  # both ranks leave together (gloo can abort when a peer tears down first)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed  # two spawned processes that import torch and timm: ~9 s
def test_timm_imagenet_ranks_read_their_shard_and_evaluate_the_whole_set(tmp_path: Path) -> None:
    init_file = str(tmp_path / "rendezvous")  # gloo's file store: a path that does not exist yet
    mp.start_processes(
        _data_parallel_worker, args=(init_file, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    # each rank reads its own batch of 8 (batch_size is per device): a global batch of 16
    assert rank0["images"].shape == (8, 3, 224, 224) and rank0["targets"].shape == (8, 1000)
    assert not torch.equal(rank0["images"], rank1["images"])
    assert rank0["global_batch"] == rank1["global_batch"] == 16
    assert rank0["steps"] == rank1["steps"] == 32 // 16

    task = TimmImageNet(synthetic=True, **TINY)
    task.setup(torch.device("cpu"))
    single = evaluate(task, task.build_model(), "val")
    for result in (rank0, rank1):
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert result["score"] == pytest.approx(single["score"])


def test_timm_imagenet_without_mixing_trains_on_class_indices(make_task) -> None:
    task = make_task("imagenet_vit", **TINY, mixup_alpha=0.0, cutmix_alpha=0.0)
    task.setup(torch.device("cpu"))
    batch = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    labels = batch[1]
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert math.isfinite(task.loss(task.build_model(), batch).item())
