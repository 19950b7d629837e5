"""BPDA: attack a preprocessing defense with the preprocessing treated as identity on the way back."""
from __future__ import annotations

import torch
from torch import nn

from .base import LossFn
from .pgd import PGD


class IdentityBackward(nn.Module):
    """``classifier(preprocess(x))`` forward; backward as if preprocess were the identity.

    The straight-through form x + (preprocess(x) - x).detach(): the value is preprocess(x), the
    gradient with respect to x is the identity's.
    """

    def __init__(self, preprocess: nn.Module, classifier: nn.Module):
        super().__init__()
        self.preprocess, self.classifier = preprocess, classifier
        self.num_classes = getattr(classifier, "num_classes", None)
        self.input_shape = getattr(classifier, "input_shape", None)
        if hasattr(classifier, "check_input"):
            self.check_input = classifier.check_input
        # its own flag only: building the wrapper changes neither module (the attack runs both in eval
        # mode and gives every submodule its mode back)
        self.training = bool(classifier.training)

    def same_forward_as(self, model: nn.Module) -> bool:
        """True for a ``Defended(preprocess, classifier)`` of the same two modules (same outputs)."""
        pre = getattr(model, "denoiser", getattr(model, "preprocess", None))
        return pre is self.preprocess and getattr(model, "classifier", None) is self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            cleaned = self.preprocess(x)
        return self.classifier(x + (cleaned - x).detach())


class BPDA(PGD):
    """PGD with Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, ICML 2018,
    https://arxiv.org/abs/1802.00420): the forward pass runs ``classifier(preprocess(x))``, the
    backward pass replaces ``preprocess`` by the identity. The standard tool against
    preprocessing that is non-differentiable or whose gradients are masked.

    Args:
        preprocess: the defense's preprocessing (e.g. a denoiser), images -> images in [0, 1].
        classifier: the classifier behind it.
        eps, steps, step_size, norm, random_start, restarts, loss_fn: as :class:`PGD`.

        >>> x_adv = BPDA(denoiser, classifier, eps=0.3, steps=40, step_size=0.01)(x, y)

    Introduced in notebooks/02_feature_loss_denoiser.ipynb.
    """

    name = "bpda"

    def __init__(self, preprocess: nn.Module, classifier: nn.Module, eps: float = 0.3, steps: int = 40,
                 step_size: float | None = None, norm: str = "linf", random_start: bool = True,
                 restarts: int = 1, loss_fn: LossFn | None = None):
        super().__init__(IdentityBackward(preprocess, classifier), eps=eps, steps=steps, step_size=step_size,
                         norm=norm, random_start=random_start, restarts=restarts, loss_fn=loss_fn)
