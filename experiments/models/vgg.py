"""VGG16 with batch norm for 32x32 inputs (the CIFAR VGG of the paper's runner)."""

from __future__ import annotations

from torch import nn
from torchvision.models.vgg import cfgs, make_layers


class CifarVGG(nn.Module):
    """torchvision's VGG feature stack, then the CIFAR classifier of chengyangfu/pytorch-vgg-cifar10.

    torchvision's own VGG head (adaptive pool to 7x7, 25088-4096-4096) is the ImageNet one. The CIFAR head
    used by the paper's runner: Dropout(0.5), Linear 512-512, ReLU, Dropout(0.5), Linear 512-512, ReLU,
    Linear 512-num_classes. Convolutions are initialised N(0, 2 / (k^2 out_channels)) (Kaiming normal,
    fan-out) with zero bias; batch norm and the linear layers keep PyTorch's defaults, as there.
    """

    def __init__(self, config: str = "D", num_classes: int = 10, batch_norm: bool = True) -> None:
        super().__init__()
        self.features = make_layers(cfgs[config], batch_norm=batch_norm)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    """VGG16 (configuration D: 13 convolutions) with batch norm and the 512-512-num_classes head."""
    return CifarVGG("D", num_classes, batch_norm=True)
