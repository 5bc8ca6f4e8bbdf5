"""The models of the paper's experiments, each a builder function that configs name with `_target_`."""

from experiments.models.cifar_resnet import resnet20, resnet110
from experiments.models.mlp import mlp
from experiments.models.resnet import resnet18_32
from experiments.models.vgg import vgg16_bn
from experiments.models.vit import vit_cifar

__all__ = ["mlp", "resnet18_32", "resnet20", "resnet110", "vgg16_bn", "vit_cifar"]
