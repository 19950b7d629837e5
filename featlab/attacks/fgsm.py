"""FGSM: one signed-gradient step (Linf)."""
from __future__ import annotations

import torch
from torch import nn

from .._utils import check_number
from .base import Attack, LossFn


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572).

    Threat model: Linf ball of radius ``eps`` around x, intersected with [0, 1].

    Args:
        model: classifier taking (N, C, H, W) pixels in [0, 1].
        eps: Linf radius in pixel units, 0 <= eps <= 1 (default 0.3, MNIST's usual value).
        loss_fn: per-example loss to increase (default cross-entropy).

    Shape: x (N, C, H, W) in [0, 1], y (N,) -> x_adv like x.

        >>> atk = FGSM(model, eps=0.3)
        >>> x_adv = atk(x, y)

    Introduced in notebooks/01_feature_noise.ipynb.
    """

    name, norm, params = "fgsm", "linf", ("eps",)

    def __init__(self, model: nn.Module, eps: float = 0.3, loss_fn: LossFn | None = None):
        super().__init__(model, loss_fn)
        check_number("eps", eps, low=0.0, high=1.0)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        grad = self.input_grad(x, y)
        return (x + self.eps * grad.sign()).clamp_(0.0, 1.0)
