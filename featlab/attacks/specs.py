"""The attack spec language (``featlab eval --attacks``, :func:`featlab.evaluate.sweep`): one
registry of attack kinds with their metadata, one parser, one step-size rule.

Specs::

    fgsm                      one signed-gradient step (Linf)
    pgdN[xR][_l2|_linf][@S]   PGD: N steps (default 40), R random restarts, a fixed norm, step size S
    apgd                      APGD-CE + APGD-T (AutoAttack's "fast" subset, torchattacks)
    apgd-ce[N]                featlab's batched APGD-CE alone, N iterations (default 100; Linf)
    autoattack                AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)
    autoattack-ta             torchattacks' own AutoAttack (10 iterations per member: for comparison)
    square[Q]                 Square, gradient-free, Q queries (default 5000)

The step-size rule is one formula for every eps: ``2.5 * eps / steps`` (Madry et al. 2018, appendix),
unless the spec names its step: ``pgd40@0.01`` is Madry et al.'s MNIST attack (40 steps of 0.01 at
eps 0.3). So "pgd40" is the same attack, scaled, at every eps.

Every kind carries metadata (:class:`AttackKind`): the norms it runs in, whether it is iterative,
gradient-free, parameter-free (APGD-based), or a composite of several attacks. The evaluation
checklist (:mod:`featlab.checklist`) reads these flags instead of guessing from names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .._utils import check_choice, check_number
from .apgd import APGD
from .autoattack import autoattack, square
from .fgsm import FGSM
from .pgd import PGD, step_size_for


@dataclass(frozen=True)
class AttackKind:
    """One entry of :data:`REGISTRY`: what an attack is, for the checklist and the docs."""

    name: str
    summary: str
    norms: tuple[str, ...]
    iterative: bool           # many gradient steps: at least as strong as one-step FGSM
    gradient_free: bool       # uses the model's outputs only (a control for gradient masking)
    parameter_free: bool      # APGD-based, no step size to tune: must not be weaker than a tuned PGD
    composite: bool           # an ensemble: each member attacks what the previous ones left
    members: tuple[str, ...] = ()     # a composite's members (kind names, or torchattacks' for APGD/FAB)


REGISTRY: dict[str, AttackKind] = {k.name: k for k in (
    AttackKind("fgsm", "one signed-gradient step (Goodfellow et al. 2015)", ("linf",),
               iterative=False, gradient_free=False, parameter_free=False, composite=False),
    AttackKind("pgd", "projected gradient descent, random start (Madry et al. 2018)", ("linf", "l2"),
               iterative=True, gradient_free=False, parameter_free=False, composite=False),
    AttackKind("apgd", "APGD-CE + APGD-T (Croce & Hein 2020), AutoAttack's fast subset", ("linf", "l2"),
               iterative=True, gradient_free=False, parameter_free=True, composite=True,
               members=("apgd-ce", "apgd-t")),
    AttackKind("autoattack", "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square", ("linf", "l2"),
               iterative=True, gradient_free=False, parameter_free=True, composite=True,
               members=("apgd-ce", "apgd-t", "fab-t", "square")),
    AttackKind("autoattack-ta", "torchattacks' AutoAttack (10 iterations per member)", ("linf", "l2"),
               iterative=True, gradient_free=False, parameter_free=True, composite=True,
               members=("apgd-ce", "apgd-t", "fab", "square")),
    AttackKind("square", "Square (Andriushchenko et al. 2020): random search on the outputs", ("linf", "l2"),
               iterative=False, gradient_free=True, parameter_free=False, composite=False),
    AttackKind("apgd-ce", "featlab's batched APGD-CE (Croce & Hein 2020), no per-iteration host syncs", ("linf",),
               iterative=True, gradient_free=False, parameter_free=True, composite=False),
)}

SPECS_HELP = ("fgsm, pgdN (e.g. pgd40), pgdN_l2, pgdNxR (R restarts), pgdN@S (step size S; default "
              "2.5*eps/N), autoattack, apgd (apgd-ce + apgd-t), apgd-ceN (featlab's APGD-CE, N iterations, "
              "default 100), autoattack-ta, square or squareQ (Square, gradient-free, Q queries, default 5000)")

_PGD = re.compile(r"pgd(\d*)(?:x(\d+))?(?:_(l2|linf))?(?:@(\d*\.?\d+(?:[eE]-?\d+)?))?")


@dataclass(frozen=True)
class Spec:
    """A parsed spec: its kind and settings. ``norm`` is set when the spec fixes it ("pgd40_l2")."""

    text: str
    kind: AttackKind
    steps: int | None = None
    restarts: int = 1
    norm: str | None = None
    step_size: float | None = None
    queries: int | None = None

    @property
    def effort(self) -> int:
        """Gradient steps times restarts (PGD), for "more effort must not help the model"."""
        return (self.steps or 1) * self.restarts

    def step(self, eps: float) -> float:
        """The PGD step size at ``eps``: the spec's own, else ``2.5 * eps / steps``."""
        return self.step_size if self.step_size is not None else step_size_for(eps, self.steps or 1)

    def norm_or(self, norm: str) -> str:
        return self.norm or norm


def parse(spec: Any) -> Spec:
    """The :class:`Spec` of a spec string. Raises ValueError naming the allowed specs."""
    if not isinstance(spec, str):
        raise TypeError(f"attacks: a spec must be a string, got {type(spec).__name__}; allowed: {SPECS_HELP}")
    if spec in ("fgsm", "apgd", "autoattack", "autoattack-ta"):
        return Spec(spec, REGISTRY[spec])
    if spec.startswith("pgd"):
        m = _PGD.fullmatch(spec)
        if m is None or (m.group(1) and int(m.group(1)) == 0) or (m.group(2) and int(m.group(2)) == 0) \
                or (m.group(4) is not None and float(m.group(4)) <= 0):
            raise ValueError(f"attacks: bad PGD spec {spec!r} (steps and restarts >= 1, step size > 0); "
                             f"allowed: {SPECS_HELP}")
        return Spec(spec, REGISTRY["pgd"], steps=int(m.group(1) or 40), restarts=int(m.group(2) or 1),
                    norm=m.group(3), step_size=float(m.group(4)) if m.group(4) is not None else None)
    m = re.fullmatch(r"apgd-ce(\d*)", spec)
    if m is not None:
        if m.group(1) and int(m.group(1)) == 0:
            raise ValueError(f"attacks: bad APGD-CE spec {spec!r} (iterations >= 1); allowed: {SPECS_HELP}")
        return Spec(spec, REGISTRY["apgd-ce"], steps=int(m.group(1) or 100))
    m = re.fullmatch(r"square(\d*)", spec)
    if m is not None:
        if m.group(1) and int(m.group(1)) == 0:
            raise ValueError(f"attacks: bad Square spec {spec!r} (queries >= 1); allowed: {SPECS_HELP}")
        return Spec(spec, REGISTRY["square"], queries=int(m.group(1) or 5000))
    raise ValueError(f"attacks: unknown attack spec {spec!r}; allowed: {SPECS_HELP}")


def _build_fgsm(s: Spec, model: nn.Module, eps: float, norm: str, seed: int) -> Any:
    return FGSM(model, eps=eps)


def _build_pgd(s: Spec, model: nn.Module, eps: float, norm: str, seed: int) -> Any:
    atk = PGD(model, eps=eps, steps=s.steps, step_size=s.step(eps), norm=s.norm_or(norm), restarts=s.restarts)
    atk.name = s.text
    return atk


def _build_autoattack(s: Spec, model: nn.Module, eps: float, norm: str, seed: int) -> Any:
    version = {"autoattack": "standard", "apgd": "fast", "autoattack-ta": "torchattacks"}[s.kind.name]
    return autoattack(model, eps, norm=norm, version=version, seed=seed)


def _build_square(s: Spec, model: nn.Module, eps: float, norm: str, seed: int) -> Any:
    atk = square(model, eps, norm=norm, n_queries=s.queries, seed=seed)
    atk.name = s.text
    return atk


def _build_apgd_ce(s: Spec, model: nn.Module, eps: float, norm: str, seed: int) -> Any:
    atk = APGD(model, eps=eps, steps=s.steps, seed=seed)
    atk.name = s.text
    return atk


_BUILDERS: dict[str, Callable[..., Any]] = {"fgsm": _build_fgsm, "pgd": _build_pgd, "apgd": _build_autoattack,
                                             "autoattack": _build_autoattack, "autoattack-ta": _build_autoattack,
                                             "square": _build_square, "apgd-ce": _build_apgd_ce}


def from_spec(spec: str, model: nn.Module, eps: float, norm: str = "linf", seed: int = 0) -> Any:
    """The attack a spec names, on ``model`` at ``eps`` (see the module docstring). Its ``norm``
    attribute says which norm it runs in; its ``name`` is the spec."""
    s = parse(spec)
    check_choice("norm", norm, ("linf", "l2"))
    check_number("eps", eps, low=0.0)
    n = s.norm_or(norm)
    if n not in s.kind.norms:
        pretty = {"linf": "Linf", "l2": "L2"}
        raise ValueError(f"attacks: {spec} is an {'/'.join(pretty[m] for m in s.kind.norms)} attack; with norm {n!r} "
                         f"use a spec of {[k for k, v in REGISTRY.items() if n in v.norms]}, e.g. pgdN_l2 "
                         f"(pgd1_l2 for one L2 step); allowed: {SPECS_HELP}")
    atk = _BUILDERS[s.kind.name](s, model, eps, n, seed)
    atk.norm = n
    return atk


def strongest_pgd(specs: list[str]) -> str | None:
    """The PGD spec with the most steps x restarts (None if there is none)."""
    pgds = [parse(s) for s in specs if isinstance(s, str) and s.startswith("pgd")]
    return max(pgds, key=lambda s: s.effort).text if pgds else None
