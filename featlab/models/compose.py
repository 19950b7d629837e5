"""Model compositions: a preprocessing in front of a classifier, as one module."""
from __future__ import annotations

import torch
from torch import nn

from .._utils import check_images


class Defended(nn.Module):
    """``classifier(denoiser(x))`` as one module: puts a denoiser in front of ANY classifier.

    Exposes ``num_classes``, ``input_shape`` and ``check_input`` of the classifier, so featlab
    attacks and evaluation treat it like any model (the end-to-end white-box threat model).
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module):
        super().__init__()
        self.denoiser, self.classifier = denoiser, classifier
        self.num_classes = getattr(classifier, "num_classes", None)
        self.input_shape = getattr(classifier, "input_shape", None)
        # the pipeline's own flag starts as its classifier's, without touching either module: building
        # a Defended changes nothing in the caller's models (its train()/eval() set both, as any Module)
        self.training = bool(classifier.training)

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        check = getattr(self.classifier, "check_input", None)
        check(x, name) if callable(check) else check_images(x, name=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))
