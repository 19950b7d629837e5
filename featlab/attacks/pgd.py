"""Projected gradient descent (PGD), Linf and L2, with random start and restarts."""
from __future__ import annotations

import torch
from torch import nn

from .._utils import check_choice, check_number
from .base import Attack, LossFn, cross_entropy_per_example


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))



def step_size_for(eps: float, steps: int) -> float:
    """The step length featlab's PGD takes by default: ``2.5 * eps / steps`` (Madry et al. 2018, appendix
    A: with 2.5 eps of travel, a random start can still reach the far side of the ball). The one place
    the rule is written; training attacks, evaluation specs and the notebooks use it through here."""
    check_number("eps", eps, low=0.0)
    check_number("steps", steps, low=1, integer=True)
    step = 2.5 * float(eps) / int(steps)
    # a subnormal eps (5e-324) underflows to a zero step, which never leaves the start: one step of eps instead
    return step if step > 0 or eps == 0 else float(eps)

class PGD(Attack):
    """PGD (Madry et al. 2018, https://arxiv.org/abs/1706.06083): iterated gradient steps,
    each projected back onto the eps ball around x and onto [0, 1].

    Threat model: ``norm="linf"`` (signed steps, box projection) or ``norm="l2"``
    (normalised-gradient steps, projection onto the L2 ball).

    Args:
        model: classifier taking (N, C, H, W) pixels in [0, 1].
        eps: radius in pixel units (Linf: 0 <= eps <= 1, e.g. 0.3 MNIST, 8/255 CIFAR;
            L2: eps >= 0, e.g. 2.0 MNIST, 0.5 CIFAR). Default 0.3.
        steps: number of gradient steps (default 40).
        step_size: step length in pixel units (default 2.5 * eps / steps).
        norm: "linf" (default) or "l2".
        random_start: True: start from a uniform (Linf) or random-direction (L2) point in the
            ball (default); False: start at x; a float s: start at x + s * N(0, 1) (TRADES uses 0.001),
            projected onto the ball.
        restarts: independent runs; per example the one that misclassifies (else has the
            highest loss; with a custom ``loss_fn``: the highest loss) is kept (default 1).
        loss_fn: per-example loss to increase, ``loss_fn(model(x_adv), y) -> (N,)``
            (default cross-entropy); lets PGD attack a feature loss or a denoiser pipeline.
        targeted: if True, y are target classes and the loss is *decreased* (default False).

    Shape: x (N, C, H, W) in [0, 1], y (N,) -> x_adv like x, inside the ball and [0, 1].

    For robust accuracy (:meth:`run_for_accuracy`, which ``featlab.metrics.robust_accuracy`` uses)
    PGD keeps, per example, the first iterate that fools the model, and with ``early_exit`` stops
    computing gradients for it from then on: on a standard model most examples fall within a few
    steps, so the attack costs a fraction of ``steps`` forward/backward passes with exactly the same
    result. The random starts are drawn for the whole batch either way, so the early exit changes
    no other example's trajectory. Only for the default cross-entropy loss (a custom ``loss_fn``
    has no notion of "fooled").

        >>> atk = PGD(model, eps=0.3, steps=40, step_size=0.01)
        >>> x_adv = atk(x, y)

    Introduced in notebooks/01_feature_noise.ipynb.
    """

    name = "pgd"
    params = ("eps", "steps", "step_size", "norm", "random_start", "restarts", "targeted")
    supports_early_exit = True

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 40, step_size: float | None = None,
                 norm: str = "linf", random_start: bool | float = True, restarts: int = 1,
                 loss_fn: LossFn | None = None, targeted: bool = False):
        super().__init__(model, loss_fn)
        check_choice("norm", norm, ("linf", "l2"))
        check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
        check_number("steps", steps, low=1, integer=True)
        check_number("restarts", restarts, low=1, integer=True)
        if step_size is None:
            step_size = step_size_for(eps, steps)
        check_number("step_size", step_size, low=0.0, low_open=eps > 0)   # a zero step never leaves the start
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        if not isinstance(random_start, bool):
            check_number("random_start", random_start, low=0.0)
        self.norm, self.random_start, self.restarts = norm, random_start, int(restarts)
        self.targeted = bool(targeted)

    # -- one run ----------------------------------------------------------------------------
    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if self.random_start is False:
            return x.clone()
        if self.random_start is not True:          # Gaussian start of the given std
            return self._project(x + float(self.random_start) * torch.randn_like(x), x)
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            delta = torch.randn_like(x)
            radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
            delta = delta / _per_example_norm(delta).clamp_min(1e-12) * radius * self.eps
        return (x + delta).clamp_(0.0, 1.0)

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp_(-self.eps, self.eps)
        else:
            factor = (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp_max(1.0)
            delta = delta * factor
        return (x + delta).clamp_(0.0, 1.0)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self._start(x)
        for _ in range(self.steps):
            grad = self.input_grad(x_adv, y)
            with torch.no_grad():
                x_adv = self._step(x_adv, grad, x)
        return x_adv

    def _step(self, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One ascent step and projection for a block of rows (their own x)."""
        step = (-1.0 if self.targeted else 1.0) * self.step_size
        if self.norm == "linf":
            lo, hi = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
            return torch.maximum(torch.minimum(x_adv + step * grad.sign(), hi), lo)
        grad = grad / _per_example_norm(grad).clamp_min(1e-12)
        return self._project(x_adv + step * grad, x)

    def _fooled(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = out.argmax(1)
        return pred == y if self.targeted else pred != y

    def _run_tracked(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor,
                     early_exit: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One PGD run that freezes each example at its first fooling iterate.

        Returns (x_adv, fooled, loss): fooled (N,) bool covers every iterate, the last included;
        loss is the final loss of the examples not fooled. With ``early_exit`` only the examples
        still active and not fooled go through the model; the arithmetic per example is the same.
        """
        x_adv = self._start(x)                               # whole-batch draw, whatever is active
        n = x.shape[0]
        done = ~active                                       # frozen: not attacked, or fooled
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        every = torch.arange(n, device=x.device)
        for _ in range(self.steps):
            rows = every[~done] if early_exit else every
            if rows.numel() == 0:
                break
            grad, out = self.input_grad_and_output(x_adv[rows], y[rows])
            with torch.no_grad():
                hit = self._fooled(out, y[rows]) & ~done[rows]
                fooled[rows[hit]] = True
                done[rows[hit]] = True
                move = ~done[rows]
                r = rows[move]
                x_adv[r] = self._step(x_adv[r], grad[move], x[r])
        loss = torch.full((n,), -float("inf"), device=x.device)
        with torch.no_grad():                                # the last iterate of the rest
            rows = every[~done] if early_exit else every
            if rows.numel():
                out = self.model(x_adv[rows])
                last_hit = self._fooled(out, y[rows]) & ~done[rows]
                row_loss = self.loss_fn(out, y[rows])
                loss[rows] = -row_loss if self.targeted else row_loss
                fooled[rows[last_hit]] = True
        return x_adv, fooled, loss

    def _forward_tracked(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor,
                         early_exit: bool) -> torch.Tensor:
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if active is None else active.bool()
        if active.shape != (x.shape[0],):
            raise ValueError(f"active must be a bool tensor of shape ({x.shape[0]},), got {tuple(active.shape)}")
        if self.eps == 0:
            return x.clone()
        best, fooled, best_loss = self._run_tracked(x, y, active, early_exit)
        for _ in range(self.restarts - 1):
            cand, ok, loss = self._run_tracked(x, y, active & ~fooled if early_exit else active, early_exit)
            better = ~fooled & (ok | (loss > best_loss))     # a fooled example keeps its first success
            best[better] = cand[better]
            best_loss = torch.where(better, loss, best_loss)
            fooled |= ok & active
        best[~active] = x[~active]
        return best

    def run_for_accuracy(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None = None,
                         early_exit: bool = True) -> torch.Tensor:
        if self.loss_fn is not cross_entropy_per_example:    # no notion of fooled: the plain attack
            return self(x, y)
        return self._in_eval_mode(self._forward_tracked, x, y, active, bool(early_exit))

    # -- restarts: keep each example's strongest result -------------------------------------
    @torch.no_grad()
    def _score(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x_adv)
        loss = self.loss_fn(out, y)
        if self.targeted:
            loss = -loss
        if self.loss_fn is cross_entropy_per_example:   # logits: success = misclassified (or hit target)
            pred = out.argmax(1)
            success = pred == y if self.targeted else pred != y
        else:
            success = torch.zeros_like(loss, dtype=torch.bool)
        return success, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        best = self._run(x, y)
        if self.restarts == 1:
            return best
        best_ok, best_loss = self._score(best, y)
        for _ in range(self.restarts - 1):
            cand = self._run(x, y)
            ok, loss = self._score(cand, y)
            better = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), cand, best)
            best_ok, best_loss = best_ok | ok, torch.where(better, loss, best_loss)
        return best
