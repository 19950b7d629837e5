"""Attacks with one calling convention: ``Attack(model, eps=..., ...)(x, y) -> x_adv``.

Pixels in [0, 1], eps in pixel units. AutoAttack and Square come from torchattacks (:func:`autoattack`,
:func:`square`).

    >>> x_adv = PGD(model, eps=0.3, steps=40, step_size=0.01)(x, y)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .autoattack import SPECS_HELP, TorchattacksAttack, autoattack, from_spec, parse_pgd_spec, square, strongest_pgd
from .base import Attack, cross_entropy_per_example, model_device
from .bpda import BPDA, IdentityBackward
from .fgsm import FGSM
from .pgd import PGD

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD}


def create(name: str, model: nn.Module, **kwargs: Any) -> Attack:
    """Build a registered attack: "fgsm", "pgd" (Linf) or "pgd_l2"."""
    if name == "pgd_l2":
        return PGD(model, norm="l2", **kwargs)
    if name not in ATTACKS:
        raise ValueError(f"name: unknown attack {name!r}; allowed: {sorted(ATTACKS) + ['pgd_l2']}")
    return ATTACKS[name](model, **kwargs)


__all__ = ["autoattack", "square", "TorchattacksAttack", "from_spec", "parse_pgd_spec", "strongest_pgd", "SPECS_HELP", "Attack", "BPDA", "IdentityBackward", "FGSM", "PGD", "ATTACKS", "create", "cross_entropy_per_example", "model_device"]
