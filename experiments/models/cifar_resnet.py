"""The CIFAR ResNets of He et al. (2016, §4.2): ResNet20 (0.27M parameters) and ResNet110 (1.7M).

Three stages of 16, 32 and 64 channels with n basic blocks each (depth 6n + 2), option-A shortcuts
(parameter-free: subsample by 2 and zero-pad the new channels), batch norm, global average pooling and a
linear classifier; Kaiming-normal initialisation of the convolutions and the classifier, as in the paper's
runner (after Yerlan Idelbayev's reference implementation). torchvision and timm have only the ImageNet
ResNets, whose projection shortcuts and stems change the parameter count, hence this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option A: halve the resolution by striding and zero-pad the channels from `in_planes` to `planes`."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.extra = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        downsample = stride != 1 or in_planes != planes
        self.shortcut = ZeroPadShortcut(in_planes, planes) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with `blocks_per_stage` = n."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet20: 3 blocks per stage; 269,722 parameters with 10 classes."""
    return CifarResNet(3, num_classes)


def resnet110(num_classes: int = 100) -> CifarResNet:
    """ResNet110: 18 blocks per stage; 1,727,962 parameters with 10 classes, 1,733,812 with 100."""
    return CifarResNet(18, num_classes)
