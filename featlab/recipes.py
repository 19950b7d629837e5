"""Known-good training recipes, so the notebooks train a model in one call instead of wiring optimiser,
schedule and augmentation in their cells: :func:`fit_fast_cifar`, the recipe of ``featlab train
--optimizer sgd --lr 0.4 --lr-schedule triangle --label-smoothing 0.2 --batch-size 500`` on CIFAR.

    >>> model = featlab.models.create("cifar_airnet")
    >>> history = fit_fast_cifar(model, x_train, y_train, epochs=8, eval_data=(x_test, y_test))
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from . import data
from ._utils import check_number
from .train import Objective, Standard, Trainer, triangle_schedule


def fit_fast_cifar(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective | None = None, *,
                   epochs: int = 10, batch_size: int = 500, lr: float = 0.4, momentum: float = 0.9,
                   weight_decay: float = 5e-4, warmup_epochs: float | None = None, label_smoothing: float = 0.2,
                   device: str | torch.device | None = "auto", seed: int = 0,
                   eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                   eval_attack: Callable[[nn.Module], Callable] | None = None,
                   callback: Callable[[int, dict[str, float]], None] | None = None,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model`` (in place; e.g. ``cifar_airnet``) on CIFAR images with the fast CPU recipe; return the
    per-epoch history.

    The recipe (the airbench family's, as ``featlab train`` runs it for the shipped ``cifar_airnet`` models):
    SGD with Nesterov momentum ``momentum`` (0.9), ``lr`` 0.4 and weight decay 5e-4, batches of 500, a
    per-step triangle schedule (:func:`featlab.train.triangle_schedule`: linear up over ``warmup_epochs``,
    default ``epochs / 5``, then down to 0), random crop and flip (:func:`featlab.data.cifar_augment`).

    Args:
        objective: default ``Standard(label_smoothing=label_smoothing)`` (0.2); any objective plugs in
            (``PGDAT(eps=8/255, steps=1, step_size=10/255)`` is Fast-AT). An objective that owns its
            optimiser (AFD's ``optimizer_ec``) keeps it and its learning rates; the schedule applies to it
            and to the objective's other optimisers, and ``lr``, ``momentum``, ``weight_decay`` are unused.
        eval_data, eval_attack, callback, progress, device, seed: as :class:`featlab.train.Trainer`.

    Shapes: x (N, 3, 32, 32) in [0, 1], y (N,).
    """
    check_number("epochs", epochs, low=1, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("lr", lr, low=0.0, low_open=True)
    if warmup_epochs is not None:
        check_number("warmup_epochs", warmup_epochs, low=0.0, high=epochs)
    objective = objective if objective is not None else Standard(label_smoothing=label_smoothing)
    optimizer = getattr(objective, "optimizer_ec", None)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                    nesterov=True)
    steps = math.ceil(len(x) / batch_size)
    warmup = epochs / 5 if warmup_epochs is None else warmup_epochs
    scheduler = triangle_schedule(optimizer, epochs * steps, round(warmup * steps))
    trainer = Trainer(model, objective, epochs=epochs, batch_size=batch_size, optimizer=optimizer, scheduler=scheduler,
                      scheduler_interval="step", augment=data.cifar_augment, device=device, seed=seed,
                      eval_attack=eval_attack, progress=progress)
    return trainer.fit(x, y, eval_data=eval_data, callback=callback)
