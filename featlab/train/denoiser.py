"""Training the feature-loss denoiser (:mod:`featlab.defenses.denoiser`): adversarial pairs made on the fly
against a frozen classifier, and the feature loss between the denoised and the clean image.
Introduced in notebooks/02_feature_loss_denoiser.ipynb."""
from __future__ import annotations

import random

import torch
from torch import nn

from .._utils import borrowed, check_number
from ..attacks import FGSM, PGD
from ..defenses.denoiser import FeatureLoss
from ..models import Defended
from .objectives import Objective


class DenoiserObjective(Objective):
    """Train a denoiser (the Trainer's model) on adversarial pairs made on the fly.

    Per batch: pick eps uniformly in ``eps_range`` and an attack (FGSM or PGD, with probability
    ``pgd_fraction``) against the frozen ``classifier``; x_adv = attack(x, y); minimise
    ``loss(D(x_adv), x)``, plus the same loss on clean inputs (``clean_weight``) so the
    denoiser leaves clean images alone.

    Args:
        classifier: the frozen target classifier (attacked to make the pairs).
        loss: a :class:`FeatureLoss` (its extractor may be the classifier itself or another net).
        eps_range: (low, high) Linf radii in pixel units (default (0.05, 0.3)).
        pgd_steps: PGD steps when PGD is drawn (default 10).
        pgd_fraction: probability of PGD instead of FGSM per batch (default 0.5).
        clean_weight: weight of the clean-input term (default 0.5).
    """

    name = "denoiser"

    def __init__(self, classifier: nn.Module, loss: FeatureLoss, eps_range: tuple[float, float] = (0.05, 0.3),
                 pgd_steps: int = 10, pgd_fraction: float = 0.5, clean_weight: float = 0.5, seed: int = 0):
        lo, hi = eps_range
        check_number("eps_range[0]", lo, low=0.0, high=1.0)
        check_number("eps_range[1]", hi, low=lo, high=1.0)
        check_number("pgd_fraction", pgd_fraction, low=0.0, high=1.0)
        check_number("clean_weight", clean_weight, low=0.0)
        self.classifier, self.loss_fn = classifier, loss     # borrowed: used frozen, in eval mode, never changed
        self.eps_range, self.pgd_steps, self.pgd_fraction = (float(lo), float(hi)), int(pgd_steps), float(pgd_fraction)
        self.clean_weight = float(clean_weight)
        self.rng = random.Random(seed)

    def bind(self, trainer) -> None:
        super().bind(trainer)
        self.classifier.to(trainer.device)
        self.loss_fn.to(trainer.device)
        self.loss_fn.extractor.to(trainer.device)

    def make_pairs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, str]:
        eps = self.rng.uniform(*self.eps_range)
        if self.rng.random() < self.pgd_fraction:
            atk, kind = PGD(self.classifier, eps=eps, steps=self.pgd_steps), "pgd"
        else:
            atk, kind = FGSM(self.classifier, eps=eps), "fgsm"
        return atk(x, y), eps, kind

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return Defended(model, self.classifier)

    def loss(self, model, x, y):
        x_adv, eps, kind = self.make_pairs(x, y)
        denoised = model(x_adv)
        terms = self.loss_fn.terms(denoised, x)
        total = torch.stack(list(terms.values())).sum()
        adv_loss = total.detach()
        logs = {k: v.detach() for k, v in terms.items()}
        if self.clean_weight > 0:
            clean_loss = self.loss_fn(model(x), x)
            total = total + self.clean_weight * clean_loss
            logs["clean_term"] = clean_loss.detach()
        with torch.no_grad(), borrowed(self.classifier):
            logits = self.classifier(denoised)
            # "left": the share of the attack's loss that D leaves, loss(D(x_adv), x) / loss(x_adv, x): 1 for a
            # denoiser at the identity (and where the attack moved nothing), 0 where D removes it all. Unlike the
            # loss it does not jump with the eps each batch draws (no host sync: logged every step on every rank)
            untouched = torch.stack(list(self.loss_fn.terms(x_adv, x).values())).sum()
            logs["left"] = torch.where(untouched > 0, adv_loss / untouched, torch.ones_like(adv_loss))
        logs.update(eps=eps, pgd=float(kind == "pgd"))
        return total, logits, logs

    def state_dict(self):
        return {"rng": list(self.rng.getstate()[1]), "rng_version": self.rng.getstate()[0],
                "rng_gauss": self.rng.getstate()[2]}

    def load_state_dict(self, state):
        if state:
            self.rng.setstate((state["rng_version"], tuple(state["rng"]), state["rng_gauss"]))

    def config(self):
        return {"name": self.name, "eps_range": list(self.eps_range), "pgd_steps": self.pgd_steps,
                "pgd_fraction": self.pgd_fraction, "clean_weight": self.clean_weight,
                "taps": self.loss_fn.taps, "pixel_weight": self.loss_fn.pixel_weight}
