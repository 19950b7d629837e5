"""AutoAttack (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690) through torchattacks.

featlab does not re-implement AutoAttack: it composes torchattacks' APGD, APGD-T, FAB-T and
Square with ``torchattacks.MultiAttack`` (each attack only sees the images the previous ones
failed on), with the settings of the original "standard" version:

- APGD-CE, 100 iterations, 1 restart;
- APGD-T (targeted DLR), 100 iterations, the 9 (num_classes - 1) highest other classes;
- FAB-T, 100 iterations, 9 target classes;
- Square, 5,000 queries.

Why not ``torchattacks.AutoAttack`` itself: in torchattacks 3.3 it builds its APGD/APGD-T/FAB
with their default of 10 iterations, ten times fewer than the original, so it is weaker than
the numbers it is compared with. ``version="fast"`` keeps only APGD-CE + APGD-T (the usual
quick check); ``version="torchattacks"`` is torchattacks' own AutoAttack, for comparison.

    >>> atk = autoattack(model, eps=0.3)            # standard
    >>> acc = featlab.metrics.robust_accuracy(model, x, y, atk)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .._utils import check_choice, check_number
from .base import Attack

VERSIONS = ("standard", "fast", "torchattacks")


class TorchattacksAttack(Attack):
    """A torchattacks attack behind featlab's calling convention, so it checks what it is given like
    every featlab attack: images shaped for the model, finite, in [0, 1], a non-empty batch, labels of
    the right length and range (torchattacks itself runs on NaN, 0..255 or empty batches and returns
    a number). ``robust_accuracy`` then checks its result against ``eps``, ``norm`` and the box."""

    params = ("name", "eps", "norm")

    def __init__(self, model: nn.Module, attack: Any, name: str, eps: float, norm: str):
        super().__init__(model)
        self.attack, self.name, self.eps, self.norm = attack, name, float(eps), norm

    def forward(self, x, y):
        return self.attack(x, y)

    def __getattr__(self, name: str) -> Any:
        """The wrapped attack's own settings (``n_queries``, ``steps``, a MultiAttack's ``attacks``...)."""
        inner = self.__dict__.get("attack")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        return repr(self.attack)


def autoattack(model: nn.Module, eps: float, norm: str = "linf", version: str = "standard", seed: int = 0,
               steps: int = 100, n_queries: int = 5000, num_classes: int | None = None) -> Any:
    """A torchattacks AutoAttack ensemble, called like every featlab attack: ``atk(x, y) -> x_adv``.

    Args:
        model: the classifier (or a whole defended pipeline) on [0, 1] images.
        eps: radius in pixel units (Linf 0.3 / 8/255, or L2).
        norm: "linf" or "l2".
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square), "fast" (APGD-CE + APGD-T), or
            "torchattacks" (torchattacks.AutoAttack as shipped: 10 iterations per attack; it
            takes no ``steps``/``n_queries``, so giving them with this version is an error).
        seed: random seed of the attacks' starting points.
        steps: iterations of APGD/APGD-T/FAB-T (default 100, the original's).
        n_queries: Square's query budget (default 5000).
        num_classes: default ``model.num_classes`` or 10.
    """
    import torchattacks
    check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
    check_choice("norm", norm, ("linf", "l2"))
    check_choice("version", version, VERSIONS)
    check_number("steps", steps, low=1, integer=True)
    check_number("n_queries", n_queries, low=1, integer=True)
    if version == "torchattacks" and (steps != 100 or n_queries != 5000):
        raise ValueError("steps/n_queries: torchattacks.AutoAttack sets its own (10 iterations); "
                         "use version 'standard' or 'fast' to choose them")
    n_classes = int(num_classes or getattr(model, "num_classes", 10))
    if n_classes < 4:      # APGD-T's DLR loss reads the 4th-largest logit (Croce & Hein 2020, eq. 6)
        raise ValueError(f"num_classes: AutoAttack's targeted APGD (DLR loss) needs at least 4 classes, got "
                         f"{n_classes}; for fewer classes use PGD or square(...)")
    nn_name = "Linf" if norm == "linf" else "L2"
    if version == "torchattacks":
        atk = torchattacks.AutoAttack(model, norm=nn_name, eps=eps, version="standard", n_classes=n_classes, seed=seed)
    else:
        parts = [torchattacks.APGD(model, norm=nn_name, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"),
                 torchattacks.APGDT(model, norm=nn_name, eps=eps, steps=steps, n_restarts=1, seed=seed,
                                    n_classes=n_classes)]
        if version == "standard":
            parts += [torchattacks.FAB(model, norm=nn_name, eps=eps, steps=steps, n_restarts=1, seed=seed,
                                       multi_targeted=True, n_classes=n_classes),
                      torchattacks.Square(model, norm=nn_name, eps=eps, n_queries=n_queries, n_restarts=1, seed=seed)]
        atk = torchattacks.MultiAttack(parts)
    return TorchattacksAttack(model, atk, {"standard": "autoattack", "fast": "apgd", "torchattacks": "autoattack-ta"}[version],
                              eps, norm)


def square(model: nn.Module, eps: float, norm: str = "linf", n_queries: int = 5000, seed: int = 0) -> Any:
    """torchattacks' Square attack alone (Andriushchenko et al. 2020): random search, no gradients.

    The checklist's black-box control: it needs only the model's outputs, so a model whose
    gradients mislead PGD (masking) does not fool it. If Square beats the gradient attacks,
    the gradient attacks' numbers overstate the robustness. Like torchattacks' APGD, it seeds
    torch's global RNG with ``seed`` on every call (every batch gets the same random squares).
    """
    import torchattacks
    check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
    check_choice("norm", norm, ("linf", "l2"))
    check_number("n_queries", n_queries, low=1, integer=True)
    atk = torchattacks.Square(model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=n_queries,
                              n_restarts=1, seed=seed)
    return TorchattacksAttack(model, atk, "square" if n_queries == 5000 else f"square{n_queries}", eps, norm)
