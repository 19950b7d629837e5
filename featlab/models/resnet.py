"""ResNet-18 and PreAct ResNet-18 for 32x32 inputs (CIFAR), with featlab's encoder/head split;
``resnet18_l2`` is ResNet-18 with the AFD reference's unit-length 512-d feature."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import FeatureModel, L2Normalize, Normalize

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """The ResNet basic block (He et al. 2016): two 3x3 convs with BatchNorm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """The pre-activation block (He et al. 2016, arXiv 1603.05027): BN-ReLU before each conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + short


def _stage(block: type, cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    layers = [block(cin, cout, stride)] + [block(cout, cout, 1) for _ in range(n - 1)]
    return nn.Sequential(*layers)


def _resnet18(block: type, preact: bool, num_classes: int, name: str, in_channels: int = 3,
              mean=CIFAR10_MEAN, std=CIFAR10_STD, normalize_embedding: bool = False) -> FeatureModel:
    if preact:
        stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    else:
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    stages: list[tuple[str, nn.Module]] = [
        ("stem", stem),
        ("layer1", _stage(block, 64, 64, 2, 1)),
        ("layer2", _stage(block, 64, 128, 2, 2)),
        ("layer3", _stage(block, 128, 256, 2, 2)),
        ("layer4", _stage(block, 256, 512, 2, 2)),
    ]
    if preact:   # the final BN-ReLU of a pre-activation network belongs before pooling
        stages.append(("final", nn.Sequential(nn.BatchNorm2d(512), nn.ReLU())))
    stages.append(("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())))
    if normalize_embedding:      # no parameters: the state dict is the plain network's, key for key
        stages.append(("l2norm", L2Normalize()))
    return FeatureModel(Normalize(mean, std), nn.Sequential(OrderedDict(stages)), nn.Linear(512, num_classes),
                        (in_channels, 32, 32), num_classes, name=name)


def resnet18(num_classes: int = 10) -> FeatureModel:
    """ResNet-18 for 32x32 images (He et al. 2016, CIFAR variant: 3x3 stem, no max-pool).

    Taps: stem, layer1..layer4, pool, embedding (512-d), logits. Input (N, 3, 32, 32) in [0, 1].
    """
    return _resnet18(BasicBlock, False, num_classes, "resnet18")


def preact_resnet18(num_classes: int = 10) -> FeatureModel:
    """PreAct ResNet-18 (He et al. 2016, arXiv 1603.05027), the usual CIFAR adversarial-training net.

    Taps: stem, layer1..layer4, final, pool, embedding (512-d), logits. Input (N, 3, 32, 32) in [0, 1].
    """
    return _resnet18(PreActBlock, True, num_classes, "preact_resnet18")


def resnet18_l2(num_classes: int = 10) -> FeatureModel:
    """ResNet-18 whose 512-d embedding is L2-normalised (unit length), with a plain linear head: the
    encoder of the AFD reference code on CIFAR-10 (BashivanLab/afd; Bashivan et al. 2021,
    https://arxiv.org/abs/2006.04621), which plays its game on that unit-length feature.

    Same layers and state-dict keys as :func:`resnet18` (the normalisation has no parameters). A unit
    embedding bounds each logit by its head row's norm, so the head's scale is learnt, not given.
    Taps: stem, layer1..layer4, pool, l2norm, embedding (512-d, unit norm), logits.
    Input (N, 3, 32, 32) in [0, 1]. ``bench/gpu_cifar.py`` trains it with AFD and PGD-AT.

        >>> m = resnet18_l2().eval()
        >>> m.embed(torch.rand(2, 3, 32, 32)).norm(dim=1)      # tensor([1., 1.])
    """
    return _resnet18(BasicBlock, False, num_classes, "resnet18_l2", normalize_embedding=True)
