"""APGD-CE (Croce & Hein 2020), Linf: featlab's batched version, and :func:`apgd_ce_examples`, the
training attack built on it (AFD's default on MNIST, 40 iterations; PGD-AT at the same budget).

Every per-example decision of the algorithm (step size, whether to halve it, whether to go back to
the best point) is a tensor; the checkpoint schedule is Python ints known before the first step. The
iteration loop therefore never waits for the device: no ``.item()``, no ``.cpu()``, no branch on a
tensor's value, so a GPU stays busy however small each step's work is.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._utils import check_number, unwrap
from .base import Attack, LossFn, cross_entropy_per_example


def checkpoints(steps: int) -> list[tuple[int, int]]:
    """The step-size checkpoints of an APGD run of ``steps`` iterations, as (iteration, window) pairs.

    The paper's checkpoints are the fractions p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1}
    - 0.03, 0.06) of the budget; in integers, as the authors' code rounds them: the first window is
    int(0.22 steps) iterations long, each next one int(0.03 steps) shorter, down to int(0.06 steps)
    (each at least 1). The check runs after iteration ``iteration`` (0-based) over the ``window``
    iterations since the last one. A check after the last iteration could change nothing and is left out.

        >>> checkpoints(100)[:3]
        [(21, 22), (40, 19), (56, 16)]
    """
    check_number("steps", steps, low=1, integer=True)
    window, shortest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, i = [], window - 1
    while i < steps - 1:
        out.append((i, window))
        window = max(window - shrink, shortest)
        i += window
    return out


def _fill_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


class APGD(Attack):
    """APGD-CE, Auto-PGD on the cross-entropy (Croce & Hein 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", https://arxiv.org/abs/2003.01690):
    PGD with momentum whose step size needs no tuning. It starts at 2 * eps and is halved, per example,
    at checkpoints where fewer than a fraction ``rho`` of the steps since the last checkpoint raised the
    loss, or where neither the step size nor the best loss changed since the last one; an example whose
    step is halved goes back to its best point so far.

    Threat model: Linf, untargeted.

    Args:
        model: classifier taking (N, C, H, W) pixels in [0, 1].
        eps: Linf radius in pixel units, 0 <= eps <= 1 (e.g. 0.3 MNIST, 8/255 CIFAR). Default 8/255.
        steps: iterations, one forward+backward each (default 100, as AutoAttack runs it).
        restarts: runs from fresh random starts; a restart attacks only the examples no earlier run
            fooled (default 1).
        rho: the fraction of the steps since the last checkpoint that must raise the loss for the step
            size to stay, 0 < rho <= 1 (default 0.75).
        seed: seed of the random starts, drawn from a private generator on the model's device: the same
            seed gives the same result on a device, and the global RNG is never touched (default 0).
        loss_fn: per-example loss to increase, ``loss_fn(model(x_adv), y) -> (N,)`` (default
            cross-entropy: APGD-CE). With another loss no example counts as fooled; the result is each
            example's highest-loss point.
        highest_loss: return every example's highest-loss iterate, fooled or not (a training attack:
            :func:`apgd_ce_examples`), instead of the first iterate that fooled it (an evaluation: the
            default, False). The fooled set is the same either way.

    Shape: x (N, C, H, W) in [0, 1], y (N,) -> x_adv like x, inside the eps ball and [0, 1]: per example
    the first iterate that fooled the model, else the iterate of highest loss (``highest_loss``: always
    the iterate of highest loss).

    The arithmetic follows the authors' code (fra31/auto-attack; torchattacks.APGD copies it): the start
    is x + eps * u / max|u| with u uniform in [-1, 1] (on the ball's surface), the momentum is 0.75 (none
    on the first step), and the first window compares its first step's loss with 0, not with the loss at
    the start. Given the same start, the best points and the fooled examples match it exactly (tested).
    Two differences, both deliberate: every example is attacked (torchattacks skips those misclassified
    clean), and an example that is not fooled comes back at its best point, not at x, so that the
    function serves as a training attack too. :meth:`run_for_accuracy` skips the inactive examples and,
    with ``early_exit``, drops the fooled ones after iterations 0, 1, 3, 7, 15, ... and at each checkpoint
    (its only host syncs, O(log steps) of them; the results do not change, as each example's run is
    independent of the others').

        >>> atk = APGD(model, eps=8 / 255, steps=100)
        >>> x_adv = atk(x, y)

    Notebooks 02 and 05 run it through whole pipelines (spec ``apgd-ce``); ``featlab eval --attacks apgd-ce100``
    runs it, and bench/apgd_speed.py measures it against torchattacks' APGD-CE.
    """

    name = "apgd-ce"
    norm = "linf"
    params = ("eps", "steps", "restarts", "rho", "seed")
    supports_early_exit = True
    #: momentum of the update, alpha in the paper (the authors fix it; APGD is "parameter-free")
    momentum = 0.75

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, seed: int = 0, loss_fn: LossFn | None = None, highest_loss: bool = False):
        super().__init__(model, loss_fn)
        if not isinstance(highest_loss, bool):
            raise TypeError(f"highest_loss: True or False, got {highest_loss!r}")
        self.highest_loss = highest_loss
        check_number("eps", eps, low=0.0, high=1.0)
        check_number("steps", steps, low=1, integer=True)
        check_number("restarts", restarts, low=1, integer=True)
        check_number("rho", rho, low=0.0, high=1.0, low_open=True)
        check_number("seed", seed, low=0, integer=True)
        self.eps, self.steps, self.restarts = float(eps), int(steps), int(restarts)
        self.rho, self.seed = float(rho), int(seed)
        self._checks = dict(checkpoints(self.steps))
        # with early_exit, fooled examples leave the batch after these iterations: the checkpoints,
        # and iterations 0, 1, 3, 7, ... (most examples that fall, fall early), so O(log steps) syncs
        self._exits = set(self._checks) | {2 ** j - 1 for j in range(self.steps.bit_length()) if 2 ** j < self.steps}

    # -- one run ----------------------------------------------------------------------------
    def _start(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x + eps * u / max|u| per example, clamped to [0, 1]; u uniform in [-1, 1]."""
        peak = _fill_view(u.flatten(1).abs().amax(1), x)
        return (x + self.eps * u / peak).clamp(0.0, 1.0)

    def _grad_loss(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input gradient, per-example loss (N,), fooled (N,) bool) at x_adv."""
        grad, out = self.input_grad_and_output(x_adv, y)
        loss = self._per_example_loss(out, y).detach()
        if self.loss_fn is cross_entropy_per_example:
            fooled = out.argmax(1) != y
        else:
            fooled = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
        return grad, loss, fooled

    def _run(self, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
             early_exit: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from the start direction u. Returns (x_adv, fooled (N,) bool, best loss (N,)):
        x_adv is the first fooling iterate where fooled, else the iterate of highest loss.

        With ``early_exit`` the examples fooled so far leave the batch after the iterations in
        ``self._exits`` (one host sync each); the others' arithmetic is unchanged."""
        a = self.momentum
        lo, hi = (x - self.eps).clamp(min=0.0), (x + self.eps).clamp(max=1.0)
        x_adv = self._start(x, u)
        grad, loss, fooled = self._grad_loss(x_adv, y)
        s = {   # the per-example state; rows of every entry are the examples still being attacked
            "x": x, "y": y, "lo": lo, "hi": hi, "x_adv": x_adv, "x_old": x_adv, "grad": grad,
            "x_best": x_adv, "grad_best": grad, "loss_best": loss, "x_fool": x_adv, "fooled": fooled,
            "step": torch.full_like(loss, 2.0 * self.eps, dtype=x.dtype),
            "ups": torch.zeros_like(loss),                    # steps that raised the loss, this window
            "loss_prev": torch.zeros_like(loss),              # the authors' code compares step 0 with 0
            "best_at_check": loss, "halved_at_check": torch.ones_like(fooled),
        }
        n = x.shape[0]
        rows = torch.arange(n, device=x.device)
        res_x, res_fooled, res_loss = x_adv.clone(), fooled.clone(), loss.clone()

        for i in range(self.steps):
            with torch.no_grad():
                x_adv, x_old = s["x_adv"], s["x_old"]
                step = _fill_view(s["step"], x)
                z = torch.clamp(x_adv + step * torch.sign(s["grad"]), s["lo"], s["hi"])
                m = a if i > 0 else 1.0                       # no momentum on the first step
                z = torch.clamp(x_adv + (z - x_adv) * m + (x_adv - x_old) * (1.0 - m), s["lo"], s["hi"])
                s["x_old"], s["x_adv"] = x_adv, z
            grad, loss, wrong = self._grad_loss(s["x_adv"], s["y"])
            with torch.no_grad():
                first = _fill_view(wrong & ~s["fooled"], x)
                s["x_fool"] = torch.where(first, s["x_adv"], s["x_fool"])
                s["fooled"] = s["fooled"] | wrong
                better = loss > s["loss_best"]
                s["x_best"] = torch.where(_fill_view(better, x), s["x_adv"], s["x_best"])
                s["grad_best"] = torch.where(_fill_view(better, x), grad, s["grad_best"])
                s["loss_best"] = torch.where(better, loss, s["loss_best"])
                s["ups"] = s["ups"] + (loss > s["loss_prev"]).to(s["ups"].dtype)
                s["loss_prev"] = loss
                s["grad"] = grad
                if i in self._checks:                         # a Python int: known before the run
                    window = self._checks[i]
                    stalled = ~s["halved_at_check"] & (s["best_at_check"] >= s["loss_best"])
                    halve = (s["ups"] <= window * self.rho) | stalled
                    s["halved_at_check"], s["best_at_check"] = halve, s["loss_best"]
                    s["step"] = torch.where(halve, s["step"] / 2.0, s["step"])
                    back = _fill_view(halve, x)
                    s["x_adv"] = torch.where(back, s["x_best"], s["x_adv"])
                    s["grad"] = torch.where(back, s["grad_best"], s["grad"])
                    s["ups"] = torch.zeros_like(s["ups"])
                if early_exit and i in self._exits:           # the run's only host syncs, O(log steps)
                    done = s["fooled"]
                    res_x[rows[done]] = (s["x_best"] if self.highest_loss else s["x_fool"])[done]
                    res_fooled[rows[done]] = True
                    keep = (~done).nonzero().squeeze(1)
                    rows = rows[keep]
                    s = {k: v[keep] for k, v in s.items()}
                    if rows.numel() == 0:
                        return res_x, res_fooled, res_loss
        with torch.no_grad():
            out = s["x_best"] if self.highest_loss else torch.where(_fill_view(s["fooled"], x), s["x_fool"], s["x_best"])
            if rows.numel() == n:                             # nothing left early: no scatter needed
                return out, s["fooled"], s["loss_best"]
            res_x[rows], res_fooled[rows], res_loss[rows] = out, s["fooled"], s["loss_best"]
        return res_x, res_fooled, res_loss

    def _directions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One start direction per restart, uniform in [-1, 1], from a private generator seeded with
        ``seed`` (drawn in fp32 then cast, so fp32 and fp64 runs start alike on a device)."""
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        return [(2 * torch.rand(x.shape, generator=gen, device=x.device) - 1).to(x.dtype)
                for _ in range(self.restarts)]

    def _attack(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None,
                early_exit: bool) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        dirs = self._directions(x)                            # drawn for the whole batch, whoever is attacked
        if active is None:
            best, fooled, best_loss = self._run(x, y, dirs[0], early_exit)
        else:
            best, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        for r, u in enumerate(dirs):
            if r == 0 and active is None:
                continue
            # a restart (or a run over the active rows) attacks the rows not fooled yet; with no
            # active mask, restarts run on the whole batch and merge, to stay free of host syncs
            if active is not None:
                idx = (active & ~fooled).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                cand, ok, loss = self._run(x[idx], y[idx], u[idx], early_exit)
                take = ok | (loss > best_loss[idx])
                best[idx] = torch.where(_fill_view(take, x), cand, best[idx])
                best_loss[idx] = torch.where(take, loss, best_loss[idx])
                fooled[idx] = ok
            else:
                cand, ok, loss = self._run(x, y, u)
                take = ~fooled & (ok | (loss > best_loss))
                best = torch.where(_fill_view(take, x), cand, best)
                best_loss = torch.where(take, loss, best_loss)
                fooled = fooled | ok
        return best

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._attack(x, y, None, False)

    def run_for_accuracy(self, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None = None,
                         early_exit: bool = True) -> torch.Tensor:
        if self.loss_fn is not cross_entropy_per_example:    # no notion of fooled: the plain attack
            return self(x, y)
        if active is not None and (not isinstance(active, torch.Tensor) or active.shape != (x.shape[0],)):
            raise ValueError(f"active must be a bool tensor of shape ({x.shape[0]},), got "
                             f"{tuple(active.shape) if isinstance(active, torch.Tensor) else type(active).__name__}")
        if active is None:
            active = torch.ones(x.shape[0], dtype=torch.bool)
        return self._in_eval_mode(self._attack, x, y, active.bool(), bool(early_exit))


def apgd_ce_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """x_adv from featlab's :class:`APGD` (APGD-CE, Linf, 1 restart, ``steps`` iterations, seed 0),
    detached, under ``autocast`` when given; the global RNG is not touched and the model's mode (each
    submodule's) is given back. Every example comes back at its highest-loss iterate, fooled or not
    (``highest_loss``: torchattacks' APGD, which this used to wrap, gave the last fooling iterate for the
    fooled examples and x back for the others; the first fooling iterate, an evaluation's answer, sits
    just past the decision boundary and would make a weak training attack)."""
    check_number("eps", eps, low=0.0, high=1.0)
    check_number("steps", steps, low=1, integer=True)
    with (autocast or contextlib.nullcontext()):
        return APGD(unwrap(model), eps=eps, steps=steps, restarts=1, seed=0, highest_loss=True)(x, y).detach()
