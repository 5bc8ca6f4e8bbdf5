"""Architectures of the paper's experiments: parameter counts, layouts and output shapes."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from experiments.models import mlp, resnet18_32, resnet20, resnet110, vgg16_bn, vit_cifar


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("builder", "kwargs", "expected"),
    [
        (mlp, {}, 89_610),  # 784*100+100 + 100*100+100 + 100*10+10
        (resnet20, {"num_classes": 10}, 269_722),  # "0.27M" of He et al.
        (resnet110, {"num_classes": 10}, 1_727_962),  # "1.7M"
        (resnet110, {"num_classes": 100}, 1_733_812),
        (vgg16_bn, {"num_classes": 10}, 15_253_578),
        (resnet18_32, {"num_classes": 1000}, 11_681_832),
        (vit_cifar, {"num_classes": 10}, 9_523_722),
    ],
)
def test_model_parameter_count(builder, kwargs, expected) -> None:
    assert n_params(builder(**kwargs)) == expected


@pytest.mark.parametrize(
    ("builder", "input_shape", "num_classes"),
    [
        (mlp, (2, 1, 28, 28), 10),
        (resnet20, (2, 3, 32, 32), 10),
        (vgg16_bn, (2, 3, 32, 32), 10),
        (resnet18_32, (2, 3, 32, 32), 1000),
        (vit_cifar, (2, 3, 32, 32), 10),
    ],
)
def test_model_output_is_one_logit_per_class(builder, input_shape, num_classes) -> None:
    model = builder(num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(input_shape)).shape == (input_shape[0], num_classes)


def test_cifar_resnet_option_a_shortcuts_have_no_parameters() -> None:
    model = resnet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # the stem plus two 3x3 convolutions per block, and no 1x1 projection shortcut
    assert len(convs) == 1 + 2 * 9
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    downsampling = [model.layer2[0], model.layer3[0]]
    assert all(n_params(block.shortcut) == 0 for block in downsampling)
    x = torch.randn(1, 16, 32, 32)
    out = model.layer2[0].shortcut(x)
    assert out.shape == (1, 32, 16, 16)
    # the input channels sit in the middle, the padded channels are zero
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_cifar_resnet_initialises_kaiming_normal() -> None:
    torch.manual_seed(0)
    weight = resnet110().layer3[5].conv1.weight
    fan_in = weight[0].numel()
    assert weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.05)


def test_vgg16_bn_has_thirteen_batch_normed_convolutions() -> None:
    model = vgg16_bn()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == len(norms) == 13
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]


def test_resnet18_32_keeps_the_resolution_in_the_stem() -> None:
    model = resnet18_32()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    features = {}
    model.layer4.register_forward_hook(lambda m, i, o: features.setdefault("layer4", o))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    assert features["layer4"].shape == (1, 512, 4, 4)


def test_vit_cifar_uses_timm_with_the_paper_settings() -> None:
    model = vit_cifar()
    assert isinstance(model, VisionTransformer)
    assert model.patch_embed.patch_size == (4, 4)
    assert model.pos_embed.shape == (1, 64 + 1, 512)  # 8x8 patches and the class token
    assert len(model.blocks) == 6
    block = model.blocks[0]
    assert block.attn.num_heads == 8 and block.attn.head_dim == 64
    assert block.attn.qkv.bias is None
    assert block.mlp.fc1.out_features == 512
    assert model.global_pool == "token"
    assert model.pos_drop.p == 0.1
    assert block.attn.attn_drop.p == 0.1 and block.attn.proj_drop.p == 0.1
    assert block.mlp.drop1.p == 0.1 and block.mlp.drop2.p == 0.1
