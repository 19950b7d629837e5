"""Attacks with one calling convention: ``Attack(model, eps=..., ...)(x, y) -> x_adv``.

Pixels in [0, 1], eps in pixel units. AutoAttack and Square come from torchattacks (:func:`autoattack`,
:func:`square`). Attacks by name: :func:`from_spec` ("pgd40", "autoattack", ...), whose kinds and
their metadata are in :data:`REGISTRY` (:mod:`featlab.attacks.specs`).

    >>> x_adv = PGD(model, eps=0.3, steps=40, step_size=0.01)(x, y)
    >>> x_adv = from_spec("pgd40@0.01", model, eps=0.3)(x, y)          # the same attack
"""
from __future__ import annotations

from .apgd import APGD
from .autoattack import TorchattacksAttack, autoattack, square
from .base import Attack, GradientMaskingWarning, canonical_norm, cross_entropy_per_example, model_device
from .bpda import BPDA, IdentityBackward
from .fgsm import FGSM
from .pgd import PGD, step_size_for
from .specs import REGISTRY, SPECS_HELP, AttackKind, Spec, from_spec, parse, strongest_pgd

__all__ = ["APGD", "Attack", "AttackKind", "BPDA", "FGSM", "GradientMaskingWarning", "IdentityBackward", "PGD", "REGISTRY", "step_size_for",
           "SPECS_HELP", "Spec", "TorchattacksAttack", "autoattack", "canonical_norm", "cross_entropy_per_example",
           "from_spec", "model_device", "parse", "square", "strongest_pgd"]
