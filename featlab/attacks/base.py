"""The attack base class: one calling convention, ``attack(x, y) -> x_adv``.

``__call__`` checks the inputs once, puts the model in eval mode (restoring its mode
afterwards), moves the batch to the model's device, and runs the subclass's ``forward``.
Gradients are taken with respect to the input only, so nothing accumulates in the model's
parameters' ``.grad``.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from .._utils import model_device  # noqa: F401  (re-exported by featlab.attacks)
from .._utils import borrowed, check_labels, check_model_input, inputs_checked, unwrap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_example(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default attack loss: cross-entropy of logits (N, K) against labels (N,), shape (N,)."""
    return nn.functional.cross_entropy(output, y, reduction="none")


def canonical_norm(norm: Any) -> str | None:
    """"linf" or "l2" for the ways attacks spell their norm ("Linf", "inf", "L2"); None otherwise."""
    n = str(norm).lower() if norm is not None else None
    return {"linf": "linf", "l2": "l2", "inf": "linf"}.get(n) if n else None


class GradientMaskingWarning(UserWarning):
    """An evaluation failed a sanity check, or an attack got no gradient: a robust accuracy
    measured this way may come from masked gradients, not from robustness."""


class Attack:
    """Base class. A subclass declares ``params`` and writes ``forward(x, y) -> x_adv``.

    Args:
        model: any ``nn.Module`` mapping images in [0, 1] (N, C, H, W) to an output the loss
            understands (logits (N, K) by default).
        loss_fn: ``loss_fn(output, y) -> (N,)`` per-example loss to *increase*
            (default: cross-entropy). Replace it to attack a feature loss or a pipeline.
    """

    name = "attack"
    norm = "linf"
    params: tuple[str, ...] = ()
    #: whether :meth:`run_for_accuracy` can stop attacking an example once it is fooled
    supports_early_exit = False

    def __init__(self, model: nn.Module, loss_fn: LossFn | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(output, y), got {type(loss_fn).__name__}")
        self.model = unwrap(model)
        self.loss_fn: LossFn = loss_fn or cross_entropy_per_example

    # -- the hook subclasses use ------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss (N,) of the model at x."""
        return self._per_example_loss(self.model(x), y)

    def _per_example_loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.loss_fn(output, y)
        if out.dim() == 0:
            raise ValueError("loss_fn must return one loss per example, shape (N,), not a scalar")
        return out

    def input_grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed per-example loss with respect to x only.

        A model whose output does not depend differentiably on x (e.g. it thresholds its input)
        gets a zero gradient, not an error: that is gradient masking, and the evaluation
        checklist (``featlab.checklist.checklist``) is there to notice it.
        """
        return self.input_grad_and_output(x, y)[0]

    def input_grad_and_output(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient as :meth:`input_grad`, the model's output at x): the output comes free with the
        forward pass, and tells an iterative attack which examples are already fooled."""
        x = x.detach().requires_grad_(True)
        output = self.model(x)
        loss = self._per_example_loss(output, y).sum()
        grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
        if grad is None:
            if not getattr(self, "_warned_no_grad", False):
                self._warned_no_grad = True
                warnings.warn(f"{type(self).__name__}: the loss does not depend differentiably on the input (a "
                              f"detach, no_grad or a hard threshold in the model?); the attack gets a zero gradient "
                              f"and its robust accuracy means nothing", GradientMaskingWarning, stacklevel=3)
            grad = torch.zeros_like(x)
        return grad, output.detach()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError("an Attack subclass must implement forward(x, y)")

    # -- the calling convention -------------------------------------------------------------
    def check_inputs(self, x: Any, y: Any) -> None:
        check_model_input(self.model, x)
        check_labels(y, x.shape[0], getattr(self.model, "num_classes", None))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._in_eval_mode(self.forward, x, y)

    def run_for_accuracy(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None = None,
                         early_exit: bool = True) -> torch.Tensor:
        """Adversarial examples for measuring robust accuracy (``featlab.metrics.robust_accuracy``).

        An attack that ``supports_early_exit`` keeps, per example, the first iterate that fools the
        model (else its usual result); examples where ``active`` (bool, (N,)) is False, e.g. those
        the model already misclassifies, are not attacked and come back unchanged. ``early_exit=True``
        stops computing for an example once it is fooled: the returned examples are the same as with
        ``early_exit=False``, only cheaper. Other attacks run as ``attack(x, y)``.
        """
        return self(x, y)

    def _in_eval_mode(self, fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      *args: Any) -> torch.Tensor:
        self.check_inputs(x, y)
        device = model_device(self.model)
        x, y = x.detach().to(device), y.to(device)
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        # the attack needs gradients to the input only: freezing the parameters meanwhile spares
        # autograd the weight-gradient bookkeeping and guarantees nothing leaks into .grad; the model
        # (every submodule's mode, every requires_grad flag) is given back as it was
        with borrowed(self.model), torch.enable_grad(), inputs_checked():   # inputs checked above
            x_adv = fn(x, y, *args)
        return x_adv.detach()

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"
