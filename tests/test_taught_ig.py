"""Notebook 04's taught cell (Integrated Gradients in plain PyTorch) against featlab.widgets.attributions (captum's
IntegratedGradients): the same model, image, class and baseline give the same map, and the map is complete."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import featlab
from featlab.nbtools import taught
from featlab.widgets import attributions
from conftest import tiny_bn_model, tiny_model

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_attack_explorer.ipynb"


@pytest.fixture(scope="module")
def integrated_gradients():
    return taught(NOTEBOOK)["integrated_gradients"]


def _mnist_cnn():
    torch.manual_seed(3)
    return featlab.models.create("mnist_cnn")


MODELS = {"tiny": (tiny_model, (1, 8, 8), 3), "tiny_bn": (tiny_bn_model, (1, 8, 8), 3),
          "tiny_rgb": (lambda: tiny_model(channels=3), (3, 8, 8), 3), "mnist_cnn": (_mnist_cnn, (1, 28, 28), 10)}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("steps", [8, 64])
def test_taught_ig_equals_captum(integrated_gradients, name, steps):
    build, shape, classes = MODELS[name]
    model = build()
    g = torch.Generator().manual_seed(7)
    x, x_adv = torch.rand(1, *shape, generator=g), torch.rand(1, *shape, generator=g)
    model.train()                               # both must read BatchNorm's running statistics and give train mode back
    before = copy.deepcopy(model.state_dict())
    lib = attributions(model, x, x_adv, 1, 2, ig_steps=steps)
    for base, key in ((0.0, "ig/clean"), (0.5, "ig_grey/clean")):
        mine = integrated_gradients(model, x, 1, baseline=base, steps=steps)
        assert mine.shape == lib[key].shape == shape[1:]
        # fp32 sums in another order (captum scales each point's gradient before its sum): equal up to rounding
        torch.testing.assert_close(mine, lib[key], rtol=1e-4, atol=1e-5 * float(lib[key].abs().max()))
    mine_adv = integrated_gradients(model, x_adv, 2, baseline=0.5, steps=steps)
    torch.testing.assert_close(mine_adv, lib["ig_grey/adv"], rtol=1e-4, atol=1e-5 * float(lib["ig_grey/adv"].abs().max()))
    assert model.training, "integrated_gradients restores the model's mode"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_taught_ig_is_complete_with_enough_points_and_wrong_with_a_wrong_target(integrated_gradients):
    model = _mnist_cnn().eval()
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        change = model(x)[0, 4] - model(torch.full_like(x, 0.5))[0, 4]
    ig = integrated_gradients(model, x, 4, baseline=0.5, steps=64)
    assert abs(float(ig.sum() - change)) < 0.02 * abs(float(change)) + 1e-4, (float(ig.sum()), float(change))
    other = integrated_gradients(model, x, 5, baseline=0.5, steps=64)
    assert (other - ig).abs().max() > 1e-3, "another class gives another map"
