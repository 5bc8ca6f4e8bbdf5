"""Optimizers and schedules from their configs (experiments.runner.optim): the weight-decay param groups of
`weight_decay_exempt` against the groups timm builds, and the warmup-cosine schedule against timm's."""

from __future__ import annotations

import pytest
import timm
import timm.optim
import timm.scheduler
import torch
from _toy_task import compose_config
from omegaconf import OmegaConf
from torch import nn

from experiments.runner import optim


def _tiny_vit() -> nn.Module:
    # a timm ViT has all three kinds of exempt parameters: biases, norm weights and no_weight_decay()
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=10
    )


def _groups_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[float, set]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [
        (group["weight_decay"], {names[id(p)] for p in group["params"]})
        for group in optimizer.param_groups
    ]


def test_build_optimizer_bias_and_norm_builds_timms_param_groups() -> None:
    model = _tiny_vit()
    node = compose_config("experiment=imagenet_vit", "optimizer=adamw").optimizer
    wd = node.weight_decay
    ours = optim.build_optimizer(node, model, weight_decay_exempt="bias_and_norm")
    timms = timm.optim.create_optimizer_v2(model, "adamw", lr=node.lr, weight_decay=wd)

    decayed, exempt = _groups_by_name(model, ours)
    assert decayed[0] == wd and exempt[0] == 0.0  # the decayed group first: the loop logs group 0
    assert sorted(_groups_by_name(model, timms)) == sorted([decayed, exempt])
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias"} <= exempt[1]
    assert "blocks.0.norm1.weight" in exempt[1] and "blocks.0.attn.qkv.bias" in exempt[1]
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"} <= decayed[1]
    assert all(p.ndim >= 2 for group in ours.param_groups[:1] for p in group["params"])
    assert len(decayed[1] | exempt[1]) == len(list(model.parameters()))


def test_build_optimizer_bias_and_norm_applies_to_any_model() -> None:
    """No timm model needed: a plain torch model's biases and norm weights are exempt (the 1-d ones)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    node = OmegaConf.create({"_target_": "torch.optim.AdamW", "_partial_": True, "name": "adamw",
                             "lr": 0.1, "weight_decay": 0.5})  # fmt: skip
    opt = optim.build_optimizer(node, model, weight_decay_exempt="bias_and_norm")
    assert _groups_by_name(model, opt) == [
        (0.5, {"0.weight", "3.weight"}),
        (0.0, {"0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "3.bias"}),
    ]
    # the default: one group, every parameter decays
    (group,) = optim.build_optimizer(node, model).param_groups
    assert group["weight_decay"] == 0.5 and len(group["params"]) == len(list(model.parameters()))


def test_build_optimizer_exempt_parameters_are_not_decayed() -> None:
    """A step with zero gradients is pure weight decay: AdamW shrinks the weights by (1 - lr * wd) and
    leaves the exempt parameters alone."""
    model = _tiny_vit()
    cfg = compose_config("experiment=imagenet_vit", "optimizer=adamw")
    opt = optim.build_optimizer(cfg.optimizer, model, weight_decay_exempt="bias_and_norm")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    shrink = 1.0 - cfg.optimizer.lr * cfg.optimizer.weight_decay
    for name, p in model.named_parameters():
        expected = before[name] if p.ndim <= 1 or name in ("cls_token", "pos_embed") else (
            before[name] * shrink
        )  # fmt: skip
        torch.testing.assert_close(p.detach(), expected, msg=name)


def test_build_optimizer_momo_adam_steps_with_the_two_groups() -> None:
    model = _tiny_vit()
    cfg = compose_config("experiment=imagenet_vit")
    opt = optim.build_optimizer(cfg.optimizer, model, weight_decay_exempt="bias_and_norm")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = model(images).logsumexp(dim=1).mean()
    loss.backward()
    opt.step(loss=loss)
    decayed, exempt = opt.param_groups
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.02, 0.0)
    assert decayed["step_size"] > 0 and exempt["step_size"] > 0


def test_build_optimizer_rejects_an_unknown_exemption_and_a_parameter_list() -> None:
    node = compose_config("experiment=imagenet_vit", "optimizer=adamw").optimizer
    model = nn.Linear(2, 1)
    with pytest.raises(
        ValueError, match=r"Invalid weight_decay_exempt: 'norms' \(null or bias_and"
    ):
        optim.build_optimizer(node, model, weight_decay_exempt="norms")
    with pytest.raises(TypeError, match="needs the model"):
        optim.build_optimizer(node, model.parameters(), weight_decay_exempt="bias_and_norm")


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[list[float]]:
    """The lr of each group in each epoch, as the loop trains with it (the scheduler steps after it)."""
    lrs = []
    for _ in range(epochs):
        lrs.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _two_groups(lr: float) -> torch.optim.Optimizer:
    params = [torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)]
    return torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=lr)


def test_warmup_cosine_of_imagenet_vit_is_timms_cosine_scheduler() -> None:
    """The experiment's schedule against timm's CosineLRScheduler as timm's train.py builds it from the
    authors' config (--sched cosine --epochs 200 --warmup-epochs 5, default --warmup-lr 1e-5, --min-lr 0,
    no warmup prefix): the same lr in every epoch and every param group."""
    cfg = compose_config("experiment=imagenet_vit")
    ours = optim.build_schedule(
        cfg.schedule, _two_groups(cfg.optimizer.lr), epochs=cfg.epochs, steps_per_epoch=100
    )
    reference = _two_groups(cfg.optimizer.lr)
    timms = timm.scheduler.CosineLRScheduler(
        reference, t_initial=200, lr_min=0.0, warmup_t=5, warmup_lr_init=1e-5, warmup_prefix=False
    )
    expected = []
    for epoch in range(cfg.epochs):
        timms.step(epoch)
        expected.append([group["lr"] for group in reference.param_groups])
    got = _lrs(ours, cfg.epochs)
    assert got[0] == pytest.approx([1e-5, 1e-5])  # the warmup starts from timm's --warmup-lr
    assert got == [pytest.approx(row, rel=1e-12, abs=1e-15) for row in expected]


def test_warmup_cosine_starts_from_an_absolute_lr_in_every_group() -> None:
    opt = _two_groups(1.0)
    opt.param_groups[1]["lr"] = 0.5
    sched = optim.warmup_cosine(opt, warmup=4, total=8, start_factor=None, start_lr=1e-2)
    lrs = _lrs(sched, 8)
    assert lrs[0] == pytest.approx([1e-2, 1e-2])
    assert lrs[2] == pytest.approx([(1e-2 + 1.0) / 2, (1e-2 + 0.5) / 2])  # halfway up, linearly
    assert lrs[4] == pytest.approx([1.0, 0.5])  # warmup_prefix: the cosine starts at its peak


@pytest.mark.parametrize(
    ("start_factor", "start_lr"), [(None, None), (0.01, 1e-5)], ids=["neither", "both"]
)
def test_warmup_cosine_needs_exactly_one_warmup_start(start_factor, start_lr) -> None:
    with pytest.raises(ValueError, match="Invalid warmup start"):
        optim.warmup_cosine(
            _two_groups(1.0), warmup=2, total=4, start_factor=start_factor, start_lr=start_lr
        )
