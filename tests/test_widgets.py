"""The explorers' callback logic, without a browser (ipywidgets objects work without a frontend)."""

import pytest
import torch

import featlab
from featlab.widgets import AttackExplorer, FeatureNoiseExplorer


@pytest.fixture
def explorer(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    return AttackExplorer({"standard": trained_mnist, "copy": trained_mnist}, xt[:20], yt[:20])


def test_compute_caches_and_reports(explorer):
    r1 = explorer.compute("standard", "PGD Linf", 0.3, 10, 0)
    assert explorer.computed == 1
    assert (r1["x_adv"] - r1["x"]).abs().max() <= 0.3 + 1e-6
    assert set(r1["attributions"]) == {"ig/clean", "ig/adv", "saliency/clean", "saliency/adv"}
    assert r1["attributions"]["ig/clean"].shape == (28, 28)
    assert list(r1["distortion"])[0] == "input" and "logits" in r1["distortion"]
    r2 = explorer.compute("standard", "PGD Linf", 0.3, 10, 0)
    assert r2 is r1 and explorer.computed == 1          # the same object, nothing recomputed: a cache hit
    explorer.compute("standard", "FGSM", 0.3, 10, 0)
    explorer.compute("standard", "FGSM", 0.3, 40, 0)          # steps do not matter for FGSM: cached
    assert explorer.computed == 2
    assert "attack SUCCEEDED" in explorer.summary(r1) or "attack FAILED" in explorer.summary(r1)


def test_eps_zero_never_succeeds_and_large_eps_does(explorer):
    r0 = explorer.compute("standard", "PGD Linf", 0.0, 10, 1)
    assert r0["pred_adv"] == r0["pred_clean"] and torch.equal(r0["x_adv"], r0["x"])
    curves = explorer.success_curves([0.0, 0.1, 0.3], n=20)
    assert curves["standard"][0] == 0.0 and curves["standard"][2] >= curves["standard"][1] and curves["standard"][2] > 80


def test_widget_reacts_to_slider_and_controls(explorer):
    box = explorer.widget()
    first = explorer.w_summary.value
    explorer.w_eps.value = 0.0                                 # "release" the slider at 0
    assert "attack FAILED" in explorer.w_summary.value and explorer.w_summary.value != first
    n = explorer.computed
    explorer.w_eps.value = 0.3                                 # back to the first value: cached
    assert explorer.w_summary.value == first and explorer.computed == n
    explorer.w_attack.value = "PGD L2"                         # a new attack and a new eps: two new results
    explorer.w_eps.value = 0.5
    assert explorer.computed == n + 2
    explorer.w_random.click()
    assert 0 <= explorer.w_index.value < 20
    assert explorer.w_eps.continuous_update is False and explorer.w_steps.continuous_update is False
    assert box.children


def test_bad_choices_are_named(explorer):
    with pytest.raises(ValueError, match="model_name must be one of"):
        explorer.compute("vgg", "FGSM", 0.1, 1, 0)
    with pytest.raises(ValueError, match="attack must be one of"):
        explorer.compute("standard", "CW", 0.1, 1, 0)
    with pytest.raises(ValueError, match="index must be"):
        explorer.compute("standard", "FGSM", 0.1, 1, 99)


def test_feature_noise_explorer_static_and_widget(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    fx = FeatureNoiseExplorer({"m": trained_mnist}, xt[:16], yt[:16], [0.1, 0.3], attack_steps=3)
    box = fx.widget()
    assert fx.spatial_taps == ["conv1", "pool1", "conv2", "pool2"]
    fx_slider = box.children[0].children[0]
    fx_slider.value = 0.3
    assert set(fx._cache) == {0.1, 0.3}
