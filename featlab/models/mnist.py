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
                 normalize_embedding: bool = True) -> FeatureModel:
    """A small ResNet for MNIST as in the AFD code (BashivanLab/afd): widths 16/32/48/64.

    stem conv 3x3 -> four stages of one BasicBlock each (strides 1, 2, 2, 2) -> global average
    pool -> 64-d embedding (L2-normalised when ``normalize_embedding``, as AFD uses it) -> linear.
    Taps: stem, layer1..layer4, pool, embedding, logits. Introduced in notebooks/03_afd.ipynb.
    """
    w = widths
    stages: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(1, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())),
        ("layer1", BasicBlock(w[0], w[0], 1)),
        ("layer2", BasicBlock(w[0], w[1], 2)),
        ("layer3", BasicBlock(w[1], w[2], 2)),
        ("layer4", BasicBlock(w[2], w[3], 2)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
    ]
    if normalize_embedding:
        stages.append(("l2norm", L2Normalize()))
    return FeatureModel(Normalize(MNIST_MEAN, MNIST_STD), nn.Sequential(OrderedDict(stages)),
                        nn.Linear(w[3], num_classes), (1, 28, 28), num_classes, name="mnist_resnet")
