"""ResNet18 for 32x32 inputs (Imagenet32): torchvision's ResNet18 with a CIFAR stem."""

from __future__ import annotations

import torchvision
from torch import nn


def resnet18_32(num_classes: int = 1000) -> torchvision.models.ResNet:
    """torchvision's resnet18 with a 3x3 stride-1 stem convolution and no max-pool.

    The layout of kuangliu/pytorch-cifar's ResNet18, which the paper's runner used for Imagenet32: the 32x32
    input keeps its resolution through the stem, so layer4 ends at 4x4 before global average pooling.
    Initialisation is torchvision's (Kaiming normal, fan-out, for every convolution, the new stem included);
    the paper's runner kept PyTorch's default initialisation.
    """
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
