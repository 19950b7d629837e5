"""Notebook 01's taught cell (Linf PGD in plain PyTorch) against featlab.attacks.PGD: the same batch, the same
seed, the same x_adv. If either drifts (the random start, the step, the projection, the mode), this fails."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import featlab
from featlab.attacks import PGD
from featlab.nbtools import taught
from conftest import tiny_bn_model, tiny_model

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_feature_noise.ipynb"


@pytest.fixture(scope="module")
def pgd_linf():
    return taught(NOTEBOOK)["pgd_linf"]


def _mnist_cnn():
    torch.manual_seed(3)                       # seeded weights: a fixed, untrained Madry CNN
    return featlab.models.create("mnist_cnn")


def _batch(shape, n, classes, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    x[0] = 0.0                                 # saturated images exercise the [0, 1] clamp
    x[1] = 1.0
    return x, torch.randint(0, classes, (n,), generator=g)


MODELS = {"tiny": (tiny_model, (1, 8, 8), 3), "tiny_bn": (tiny_bn_model, (1, 8, 8), 3),
          "mnist_cnn": (_mnist_cnn, (1, 28, 28), 10)}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("eps, steps", [(0.3, 7), (8 / 255, 3)])
def test_taught_pgd_equals_featlab_pgd(pgd_linf, name, eps, steps):
    build, shape, classes = MODELS[name]
    model = build()
    x, y = _batch(shape, 16, classes)
    model.train()                              # both must attack the model in eval mode, and give train mode back
    before = copy.deepcopy(model.state_dict())

    torch.manual_seed(11)
    mine = pgd_linf(model, x, y, eps, steps)
    assert model.training, "pgd_linf restores the model's mode"
    torch.manual_seed(11)
    lib = PGD(model, eps=eps, steps=steps, restarts=1)(x, y)
    torch.testing.assert_close(mine, lib, rtol=0, atol=0)

    for k, v in model.state_dict().items():    # eval mode: BatchNorm statistics untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters()), "the gradient is taken for the pixels only"
    assert not mine.requires_grad
    assert float((mine - x).abs().max()) <= eps + 1e-6, "inside the Linf ball"
    assert float(mine.min()) >= 0.0 and float(mine.max()) <= 1.0, "a valid image"
    assert float((mine - x).abs().max()) > 0.5 * eps, "the attack moved the pixels"

    # the attack raises the loss above the clean one and above random sign noise of the same Linf size (a descent,
    # a wrong sign or a step that never leaves the start fails this)
    noise = (x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).sign()).clamp(0, 1)
    with torch.no_grad():
        model.eval()
        loss = {k: float(torch.nn.functional.cross_entropy(model(v), y)) for k, v in
                (("clean", x), ("noise", noise), ("attack", mine))}
    assert loss["attack"] > max(loss["clean"], loss["noise"]) + 0.02, loss


def test_taught_pgd_uses_the_seed(pgd_linf):
    """The random start comes from torch's RNG: another seed gives another x_adv (so the equality above is not
    the trivial one of a deterministic start)."""
    model = tiny_model()
    x, y = _batch((1, 8, 8), 8, 3)
    torch.manual_seed(0)
    a = pgd_linf(model, x, y, 0.3, 2)
    torch.manual_seed(1)
    b = pgd_linf(model, x, y, 0.3, 2)
    assert not torch.equal(a, b)


def test_taught_pgd_fools_a_trained_model(pgd_linf, mnist_small):
    """On real digits and the shipped standard Madry CNN (the notebook's default model) the taught attack lowers the
    accuracy, and gives exactly featlab's x_adv."""
    model = featlab.pretrained.load("mnist_cnn_standard", "cpu")
    x, y = mnist_small[2][:100], mnist_small[3][:100]
    torch.manual_seed(0)
    mine = pgd_linf(model, x, y, 0.3, 10)
    torch.manual_seed(0)
    lib = PGD(model, eps=0.3, steps=10)(x, y)
    torch.testing.assert_close(mine, lib, rtol=0, atol=0)
    clean, adv = featlab.metrics.accuracy(model, x, y), featlab.metrics.accuracy(model, mine, y)
    assert clean > 90 and adv < clean - 50, (clean, adv)
