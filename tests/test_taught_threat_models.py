"""Notebook 02's taught cell (the three attackers' models, written in PyTorch) against what featlab's evaluation
builds: featlab.models.Defended for end-to-end, featlab.attacks.IdentityBackward for BPDA. The same outputs, the same
input gradients and, under one seed, the same PGD examples; if either side drifts, this fails."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from featlab.attacks import BPDA, PGD, IdentityBackward
from featlab.defenses import create_control, create_denoiser
from featlab.models import Defended
from featlab.nbtools import taught
from conftest import tiny_model

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_feature_loss_denoiser.ipynb"


@pytest.fixture(scope="module")
def cell():
    return taught(NOTEBOOK)


def _setup(defense):
    torch.manual_seed(0)
    classifier = tiny_model(size=8).eval()
    d = create_control(defense) if defense != "denoiser" else create_denoiser("residual", channels=1, width=4)
    if defense == "denoiser":
        torch.manual_seed(1)
        for p in d.parameters():        # a residual denoiser starts at the identity: move it off, so BPDA differs
            p.data.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 1, 8, 8, generator=g)
    return d.eval(), classifier, x, torch.randint(0, 3, (12,), generator=g)


def _value_and_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("defense", ["denoiser", "bits4", "median3"])
def test_taught_models_equal_featlabs(cell, defense):
    d, classifier, x, y = _setup(defense)
    pairs = {"end-to-end": Defended(d, classifier), "bpda": IdentityBackward(d, classifier), "oblivious": classifier}
    for tm, lib in pairs.items():
        mine = cell["attacked_model"](tm, d, classifier)
        out_m, grad_m = _value_and_grad(mine, x, y)
        out_l, grad_l = _value_and_grad(lib, x, y)
        torch.testing.assert_close(out_m, out_l, rtol=0, atol=0)
        torch.testing.assert_close(grad_m, grad_l, rtol=0, atol=0)
    # BPDA's value is the defended model's, its gradient the bare classifier's
    out_b, grad_b = _value_and_grad(cell["attacked_model"]("bpda", d, classifier), x, y)
    torch.testing.assert_close(out_b, classifier(d(x)).detach(), rtol=0, atol=0)
    x_def = d(x).detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(classifier(x_def), y).backward()
    torch.testing.assert_close(grad_b, x_def.grad, rtol=0, atol=0)
    if defense == "bits4":          # rounding: zero gradient end to end, so only BPDA has a direction to follow
        _, grad_e = _value_and_grad(cell["attacked_model"]("end-to-end", d, classifier), x, y)
        assert grad_e.abs().max() == 0 and grad_b.abs().max() > 0


@pytest.mark.parametrize("defense", ["denoiser", "bits4"])
def test_pgd_on_the_taught_models_gives_featlabs_examples(cell, defense):
    d, classifier, x, y = _setup(defense)
    eps, steps = 0.3, 5
    torch.manual_seed(7)
    mine = PGD(cell["attacked_model"]("bpda", d, classifier), eps=eps, steps=steps)(x, y)
    torch.manual_seed(7)
    lib = BPDA(d, classifier, eps=eps, steps=steps)(x, y)
    torch.testing.assert_close(mine, lib, rtol=0, atol=0)
    torch.manual_seed(7)
    mine = PGD(cell["attacked_model"]("end-to-end", d, classifier), eps=eps, steps=steps)(x, y)
    torch.manual_seed(7)
    lib = PGD(Defended(d, classifier), eps=eps, steps=steps)(x, y)
    torch.testing.assert_close(mine, lib, rtol=0, atol=0)
    assert (mine - x).abs().max() <= eps + 1e-6 and mine.min() >= 0 and mine.max() <= 1


def test_unknown_threat_model_is_refused(cell):
    d, classifier, _, _ = _setup("bits4")
    with pytest.raises(ValueError, match="threat_model.*bpda"):
        cell["attacked_model"]("eot", d, classifier)


def test_threat_model_attack_is_what_preprocessing_defense_runs_and_names_a_bad_threat_model(cell):
    from featlab.evaluate import threat_model_attack
    d, classifier, x, y = _setup("denoiser")
    for tm in ("oblivious", "end-to-end", "bpda"):
        torch.manual_seed(7)
        mine = PGD(cell["attacked_model"](tm, d, classifier), eps=0.3, steps=5)(x, y)
        torch.manual_seed(7)
        torch.testing.assert_close(mine, threat_model_attack(tm, d, classifier, 0.3, 5)(x, y), rtol=0, atol=0)
    with pytest.raises(ValueError, match="threat_model"):
        threat_model_attack("white-box", d, classifier, 0.3, 5)
