"""MNIST classifiers: the Madry-style small CNN and the AFD paper's small ResNet."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .base import FeatureModel, L2Normalize, Normalize
from .resnet import BasicBlock

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def mnist_cnn(num_classes: int = 10) -> FeatureModel:
    """The CNN of Madry et al. 2018 (arXiv 1706.06083) for MNIST: 2 conv + 2 fully connected.

    conv 5x5 32 -> ReLU -> maxpool 2 -> conv 5x5 64 -> ReLU -> maxpool 2 -> fc 1024 -> ReLU -> fc 10.
    Taps: conv1, pool1, conv2, pool2, fc1 (= embedding, 1024-d), logits. Input (N, 1, 28, 28) in [0, 1].
    Introduced in notebooks/01_feature_noise.ipynb.
    """
    encoder = nn.Sequential(OrderedDict([
        ("conv1", nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU())),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU())),
        ("pool2", nn.MaxPool2d(2)),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU())),
    ]))
    return FeatureModel(Normalize(MNIST_MEAN, MNIST_STD), encoder, nn.Linear(1024, num_classes),
                        (1, 28, 28), num_classes, name="mnist_cnn")


def mnist_resnet(num_classes: int = 10, widths: tuple[int, int, int, int] = (16, 32, 48, 64),
                 normalize_embedding: bool = True, blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
                 name: str = "mnist_resnet") -> FeatureModel:
    """A small ResNet for MNIST with the AFD code's widths 16/32/48/64, and ONE BasicBlock per stage:
    a lighter variant of the reference encoder (BashivanLab/afd's ResNet18FeatsNorm has two blocks
    per stage, ``blocks=(2, 2, 2, 2)``, registered as ``mnist_resnet18``). The one-block version is
    featlab's CPU default: it trains in minutes and reaches PGD-AT robustness close to the published
    numbers; the reference encoder is for GPU runs.

    stem conv 3x3 -> four stages of ``blocks`` BasicBlocks (strides 1, 2, 2, 2) -> global average
    pool -> 64-d embedding (L2-normalised when ``normalize_embedding``, as AFD uses it) -> linear.
    Taps: stem, layer1..layer4, pool, embedding, logits. Introduced in notebooks/03_afd.ipynb.
    """
    w = widths

    def stage(cin: int, cout: int, stride: int, n: int) -> nn.Module:
        first = BasicBlock(cin, cout, stride)
        return first if n == 1 else nn.Sequential(first, *[BasicBlock(cout, cout, 1) for _ in range(n - 1)])
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(1, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())),
        ("layer1", stage(w[0], w[0], 1, blocks[0])),
        ("layer2", stage(w[0], w[1], 2, blocks[1])),
        ("layer3", stage(w[1], w[2], 2, blocks[2])),
        ("layer4", stage(w[2], w[3], 2, blocks[3])),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
    ]
    if normalize_embedding:
        stages.append(("l2norm", L2Normalize()))
    return FeatureModel(Normalize(MNIST_MEAN, MNIST_STD), nn.Sequential(OrderedDict(stages)),
                        nn.Linear(w[3], num_classes), (1, 28, 28), num_classes, name=name)


def mnist_resnet18(num_classes: int = 10) -> FeatureModel:
    """The AFD code's MNIST encoder (ResNet18FeatsNorm): two BasicBlocks per stage, widths 16/32/48/64,
    L2-normalised 64-d embedding. For GPU runs of the reference schedule."""
    return mnist_resnet(num_classes, blocks=(2, 2, 2, 2), name="mnist_resnet18")
