"""The explorers' figures show what they claim: the top-5 panel uses its rows, the feature-map comparison puts
every model's differences on one scale, and the IG numbers (completeness gap, clean-vs-adversarial similarity)
are exact where the math allows."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from featlab import widgets
from featlab.widgets import FeatureNoiseExplorer
from conftest import tiny_model


def _result(p_clean, p_adv, label=0):
    """A hand-made explore() result: what explorer_figure reads."""
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = {f"{k}/{t}": torch.rand(8, 8) for k in ("ig", "ig_grey", "saliency") for t in ("clean", "adv")}
    p_clean, p_adv = torch.tensor(p_clean, dtype=torch.float64), torch.tensor(p_adv, dtype=torch.float64)
    return {"x": x, "x_adv": (x + 0.1).clamp(0, 1), "p_clean": p_clean, "p_adv": p_adv, "label": label,
            "pred_clean": int(p_clean.argmax()), "pred_adv": int(p_adv.argmax()), "attributions": maps,
            "distortion": {"input": 0.5, "logits": 1.0}}


def test_the_top5_panel_draws_every_class_on_a_log_axis():
    """A confident model: two classes share the mass, three sit at 1e-5 to 1e-9. On a linear axis from 0 to 1 those
    three rows are empty; on the log axis every bar has a length, its right end at the class's probability. The axis
    is the same in every figure (P_MIN to 1), so that two figures compare."""
    p_clean = [0.998, 1e-3, 1e-5, 1e-7, 1e-9, 1e-13, 0.0, 0.0, 0.0, 0.0]
    p_adv = [2e-6, 0.999, 1e-6, 1e-8, 1e-4, 0.0, 0.0, 0.0, 0.0, 0.0]
    fig = widgets.explorer_figure(_result(p_clean, p_adv), [str(i) for i in range(10)])
    ax = next(a for a in fig.axes if a.get_title() == "top-5 classes")
    assert ax.get_xscale() == "log"
    assert ax.get_xlim() == pytest.approx((widgets.P_MIN, 1.0))
    top5 = [1, 0, 4, 2, 3]                                        # by p_clean + p_adv
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "0 (label)", "4", "2", "3"]
    bars = ax.patches
    assert len(bars) == 10
    for bar, p in zip(bars, [p_clean[i] for i in top5] + [p_adv[i] for i in top5]):
        assert bar.get_x() == pytest.approx(widgets.P_MIN) and bar.get_x() + bar.get_width() == pytest.approx(p)
        assert math.log10(bar.get_x() + bar.get_width()) - math.log10(widgets.P_MIN) >= 1, "at least a decade long"
    assert not ax.texts, "nothing below the axis"
    # a probability under P_MIN (1e-13, and exact zeros) gets no bar and a mark that says so; the axis stays put
    r = _result([0.5, 0.5 - 1e-13, 1e-13, 0, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0])
    ax = next(a for a in widgets.explorer_figure(r, list("abcdefghij")).axes if a.get_title() == "top-5 classes")
    assert ax.get_xlim() == pytest.approx((widgets.P_MIN, 1.0)) and min(b.get_width() for b in ax.patches) >= 0
    assert [t.get_text() for t in ax.texts] == ["<1e-12"] * 6        # classes 2, 3, 4: clean and adversarial
    plt.close("all")


def test_completeness_gap_is_zero_for_a_linear_model_and_exact_for_a_planted_error():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(1, 1, 4, 4)
    maps = widgets.attributions(lin, x, x.flip(-1), 2, 1, ig_steps=4)       # IG is exact on a linear model
    cases = (("ig/clean", 0.0, x, 2), ("ig_grey/clean", 0.5, x, 2), ("ig_grey/adv", 0.5, x.flip(-1), 1))
    for key, base, inp, t in cases:
        assert widgets.completeness_gap(lin, inp, maps[key], t, base) < 1e-5, key
    with torch.no_grad():
        change = float(lin(x)[0, 2] - lin(torch.full_like(x, 0.5))[0, 2])
    planted = maps["ig_grey/clean"] + 0.25 * change / 16                     # the sum off by a quarter of the change
    assert widgets.completeness_gap(lin, x, planted, 2, 0.5) == pytest.approx(0.25, rel=1e-4)
    assert widgets.completeness_gap(lin, x, torch.zeros(4, 4), 2, 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one image"):
        widgets.completeness_gap(lin, torch.rand(2, 1, 4, 4), planted, 2)


def test_explore_reports_the_gap_of_each_ig_map_and_fewer_steps_do_worse():
    m = tiny_model().eval()
    x, y = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([1])
    coarse, fine = (widgets.explore(m, x, y, "PGD Linf", 0.2, 5, ig_steps=s) for s in (1, 64))
    assert set(fine["ig_gap"]) == {"ig/clean", "ig/adv", "ig_grey/clean", "ig_grey/adv"}
    assert max(fine["ig_gap"].values()) < 0.05
    assert max(coarse["ig_gap"].values()) > max(fine["ig_gap"].values())


def test_attribution_similarity_compares_magnitudes():
    r = _result([1.0] + [0.0] * 9, [1.0] + [0.0] * 9)
    a = torch.zeros(8, 8)
    a[:4] = 1.0
    r["attributions"].update({"ig_grey/clean": a, "ig_grey/adv": -2 * a})     # the same pixels, other sign and size
    assert widgets.attribution_similarity(r) == pytest.approx(1.0)
    r["attributions"]["ig_grey/adv"] = 1.0 - a                                 # the other pixels
    assert widgets.attribution_similarity(r) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="method"):
        widgets.attribution_similarity(r, "lrp")


@pytest.fixture
def two_models():
    a = tiny_model().eval()
    b = tiny_model().eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for p in b.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return {"a": a, "b": b}, x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_maps_figure_puts_every_models_differences_on_one_scale(two_models):
    models, x, y = two_models
    fx = FeatureNoiseExplorer(models, x, y, [0.1, 0.3], attack_steps=3, image_index=2)
    fig = fx.maps_figure(0.3, "conv", channels=3)
    assert [s._suptitle.get_text().split(":")[0] for s in fig.subfigs] == ["a", "b"]
    rel = {}
    for name in models:
        clean, adv = fx.feature_maps(0.3, "conv", name)
        rel[name] = float(((adv - clean).abs() / clean.abs().max()).max())
        d = float(fx.compute(0.3)[name]["distortion"]["adversarial"].l2["conv"][2])
        title = next(t for t in (s._suptitle.get_text() for s in fig.subfigs) if t.startswith(f"{name}:"))
        assert title == f"{name}: relative L2 distortion {d:.2f}"
    assert rel["a"] != pytest.approx(rel["b"]), "the two models' own scales differ: the test can tell them apart"
    for name, sub in zip(models, fig.subfigs):
        # rows clean, adversarial, |diff|; columns: the input image, then 3 channels: the |diff| row is axes 8-11
        assert sub.axes[8].get_ylabel() == "|diff|"
        for ax in sub.axes[9:12]:
            assert ax.images[0].get_clim() == pytest.approx((0.0, max(rel.values())))
        x_adv = fx.compute(0.3)[name]["x_adv"][2]
        shown = [torch.as_tensor(sub.axes[k].images[0].get_array().data) for k in (0, 4, 8)]
        torch.testing.assert_close(shown[0], x[2, 0])                  # the clean input
        torch.testing.assert_close(shown[1], x_adv[0])                 # under this model's own attack
        assert float(shown[2].max()) == pytest.approx(1.0, abs=1e-5)   # the pixel change: the whole budget is white
    with pytest.raises(ValueError, match="tap must be one of the spatial taps"):
        fx.maps_figure(0.3, "logits")
    plt.close("all")


def test_unattended_show_draws_the_comparison_once_and_the_widget_picks_the_model(two_models, monkeypatch):
    import IPython.display
    models, x, y = two_models
    fx = FeatureNoiseExplorer(models, x, y, [0.1, 0.3], attack_steps=2)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    monkeypatch.setenv("FEATLAB_NOTEBOOK_RUN", "1")
    fx.show(tap="conv")
    assert len(shown) == 1 and len(shown[0].subfigs) == 2, "one figure: both models' maps, no per-eps curves"
    assert "eps 0.3" in shown[0]._suptitle.get_text() and set(fx._cache) == {0.3}, "the largest eps only"
    drawn = []
    real = fx.figure
    monkeypatch.setattr(fx, "figure", lambda eps, tap, model=None: drawn.append((eps, tap, model))
                        or real(eps, tap, model))
    box = fx.widget(tap="conv")
    slider, taps, which = box.children[0].children
    assert list(which.options) == ["a", "b"] and taps.value == "conv"
    which.value = "b"
    assert drawn[-1] == (0.1, "conv", "b")
    assert fx.figure(0.1, "conv", "b").subfigs[1]._suptitle.get_text().startswith("b, tap conv")
    with pytest.raises(ValueError, match="model must be one of"):
        fx.figure(0.1, "conv", "c")
    plt.close("all")
