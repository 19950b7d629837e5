"""CPU-sized CIFAR networks: ``cifar_airnet`` (a VGG-style net in the spirit of Keller Jordan's
airbench) and ``resnet20`` (He et al. 2016's CIFAR ResNet), with featlab's encoder/head split.

Why two: PreAct ResNet-18 (0.56 GFLOPs per image) is the field's adversarial-training net, but on a
2-core CPU an epoch of it takes most of an hour. ``bench/cifar_models.py`` measures the candidates'
training throughput on the machine at hand; the numbers that chose ``cifar_airnet`` as featlab's CPU
family are in ``bench/results/cifar_models/``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import FeatureModel, L2Normalize, Normalize
from .resnet import CIFAR10_MEAN, CIFAR10_STD


class Scale(nn.Module):
    """Multiply by a constant: airbench's head scales its logits down (1/9 there), which keeps the
    max-pooled features' large logits from blowing up the first high-LR steps."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))      # pool before BN: the BN and GELU run on a quarter of the pixels
    return layers + [nn.BatchNorm2d(cout), nn.GELU()]


def cifar_airnet(num_classes: int = 10, widths: tuple[int, int, int, int] = (32, 64, 192, 192),
                 normalize_embedding: bool = False, in_channels: int = 3,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD, name: str = "cifar_airnet") -> FeatureModel:
    """A fast CIFAR classifier after airbench (Jordan 2024, arXiv 2404.00498): a 3x3 stem, then three
    blocks of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU, a global max-pool and a linear head
    whose logits are scaled by 1/8 (as airbench scales them, for stable high learning rates).

    Default widths (32, 64, 192, 192): 1.16 M parameters (4.6 MB in fp32), about 0.1 GMACs per image,
    a fifth of PreAct ResNet-18's. The widths are smaller than airbench94's (64/256/256) so the shipped
    weights stay under 5 MB; none of airbench's other tricks (whitening init, lookahead, TTA) is used.

    Taps: stem (32x32), block1 (16x16), block2 (8x8), block3 (4x4), pool, embedding, logits.
    ``normalize_embedding`` L2-normalises the embedding (the AFD code's choice for its encoders); the head
    is then a plain linear layer, as the reference's: a unit-length embedding already bounds the logits by
    the head's row norms, so airbench's 1/8 scale (there for the max-pooled features' large values) would
    only slow the head down. ``cifar_airnet_l2`` in the registry is this variant.
    """
    w = widths
    if len(w) != 4 or any(int(c) < 1 for c in w):
        raise ValueError(f"widths: four positive channel counts (stem, block1, block2, block3); got {widths!r}")
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(*_conv_bn(in_channels, w[0], pool=False))),
        ("block1", nn.Sequential(*_conv_bn(w[0], w[1], pool=True), *_conv_bn(w[1], w[1], pool=False))),
        ("block2", nn.Sequential(*_conv_bn(w[1], w[2], pool=True), *_conv_bn(w[2], w[2], pool=False))),
        ("block3", nn.Sequential(*_conv_bn(w[2], w[3], pool=True), *_conv_bn(w[3], w[3], pool=False))),
        ("pool", nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())),
    ]
    if normalize_embedding:
        stages.append(("l2norm", L2Normalize()))
        head: nn.Module = nn.Linear(w[3], num_classes)
    else:
        head = nn.Sequential(nn.Linear(w[3], num_classes, bias=False), Scale(1 / 8))
    return FeatureModel(Normalize(mean, std), nn.Sequential(OrderedDict(stages)), head,
                        (in_channels, 32, 32), num_classes, name=name)


class _ResNetBlock(nn.Module):
    """He et al.'s CIFAR basic block; the shortcut is a 1x1 conv + BN where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def cifar_airnet_l2(num_classes: int = 10, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> FeatureModel:
    """``cifar_airnet`` with a unit-length (L2-normalised) 192-d embedding and a plain linear head: the
    encoder the AFD reference code trains its game on (its ResNet-18's 512-d feature is normalised)."""
    return cifar_airnet(num_classes, normalize_embedding=True, in_channels=in_channels, mean=mean, std=std,
                        name="cifar_airnet_l2")


def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3,
             mean=CIFAR10_MEAN, std=CIFAR10_STD) -> FeatureModel:
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2): a 3x3 stem and three stages of three basic
    blocks at widths 16/32/64 (``width`` scales them), global average pool, linear. 0.27 M parameters.

    Taps: stem, layer1 (32x32), layer2 (16x16), layer3 (8x8), pool, embedding, logits.
    """
    w = (width, 2 * width, 4 * width)

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_ResNetBlock(cin, cout, stride), _ResNetBlock(cout, cout, 1), _ResNetBlock(cout, cout, 1))
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())),
        ("layer1", stage(w[0], w[0], 1)),
        ("layer2", stage(w[0], w[1], 2)),
        ("layer3", stage(w[1], w[2], 2)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
    ]
    return FeatureModel(Normalize(mean, std), nn.Sequential(OrderedDict(stages)), nn.Linear(w[2], num_classes),
                        (in_channels, 32, 32), num_classes, name="resnet20")
