"""Model registry: ``create(name)`` returns a :class:`FeatureModel` (normalisation inside);
:class:`Defended` puts a preprocessing (a denoiser) in front of any classifier; :func:`wrap` makes a reader's
own ``nn.Module`` (a torchvision CNN) a featlab model, its taps found by torchvision's feature extraction.

    >>> model = create("mnist_cnn")
    >>> model.tap_names
    ('conv1', 'pool1', 'conv2', 'pool2', 'fc1', 'embedding', 'logits')
"""
from __future__ import annotations

from typing import Any, Callable

from .._utils import check_number
from .base import FeatureModel, L2Normalize, Normalize
from .cifar import cifar_airnet, cifar_airnet_l2, resnet20
from .compose import Defended
from .mnist import mnist_cnn, mnist_resnet, mnist_resnet18
from .resnet import preact_resnet18, resnet18, resnet18_l2
from .wrap import WrappedModel, wrap

# name -> (factory, dataset it is built for)
MODELS: dict[str, tuple[Callable[..., FeatureModel], str]] = {
    "mnist_cnn": (mnist_cnn, "mnist"),
    "mnist_resnet": (mnist_resnet, "mnist"),
    "mnist_resnet18": (mnist_resnet18, "mnist"),
    "resnet18": (resnet18, "cifar10"),
    "resnet18_l2": (resnet18_l2, "cifar10"),
    "preact_resnet18": (preact_resnet18, "cifar10"),
    "cifar_airnet": (cifar_airnet, "cifar10"),
    "cifar_airnet_l2": (cifar_airnet_l2, "cifar10"),
    "resnet20": (resnet20, "cifar10"),
}


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> FeatureModel:
    """Build a registered model by name (see ``MODELS``); extra kwargs go to its factory."""
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; allowed: {sorted(MODELS)}")
    factory, _ = MODELS[name]
    if num_classes is not None:
        check_number("num_classes", num_classes, low=2, integer=True)
        kwargs["num_classes"] = num_classes
    return factory(**kwargs)


def default_dataset(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; allowed: {sorted(MODELS)}")
    return MODELS[name][1]


__all__ = ["Defended", "FeatureModel", "WrappedModel", "wrap", "Normalize", "L2Normalize", "MODELS", "create", "default_dataset",
           "mnist_cnn", "mnist_resnet", "mnist_resnet18", "resnet18", "resnet18_l2", "preact_resnet18",
           "cifar_airnet", "cifar_airnet_l2", "resnet20"]
