"""featlab: a notebook-first lab for feature-level adversarial robustness in PyTorch.

Pixels are always in [0, 1] (normalisation lives inside the models) and every ``eps`` is in
pixel units (e.g. 0.3 on MNIST, 8/255 on CIFAR-10).

    >>> import featlab
    >>> x, y = featlab.data.load("mnist", "test", limit=100)
    >>> model = featlab.models.create("mnist_cnn")
"""
from __future__ import annotations

import importlib
from typing import Any

from ._utils import VERSION, choose_fast_path, cpu_has_native_bf16, get_device, seed_everything
from . import (attacks, checklist, checkpoint, data, defenses, evaluate, metrics, models, nbtools, pretrained, probe,
               recipes, results, runs, train)

_LAZY = ("viz", "widgets")     # matplotlib and ipywidgets load on first use (``featlab.viz``), not on import


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'featlab' has no attribute {name!r}")

__version__ = VERSION

__all__ = ["attacks", "checklist", "checkpoint", "data", "defenses", "evaluate", "metrics", "models", "nbtools",
           "pretrained", "probe", "recipes", "results", "runs", "train", "viz", "widgets",
           "get_device", "seed_everything", "choose_fast_path", "cpu_has_native_bf16", "__version__"]
