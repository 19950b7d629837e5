"""The explorers' callback logic, without a browser (ipywidgets objects work without a frontend)."""

import sys
import time

import pytest
import torch
from torch import nn

import featlab
from featlab import widgets
from featlab.models import Defended
from featlab.widgets import AttackExplorer, FeatureNoiseExplorer


@pytest.fixture
def explorer(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    return AttackExplorer({"standard": trained_mnist, "copy": trained_mnist}, xt[:20], yt[:20])


def test_compute_caches_and_reports(explorer):
    r1 = explorer.compute("standard", "PGD Linf", 0.3, 10, 0)
    assert explorer.computed == 1
    assert (r1["x_adv"] - r1["x"]).abs().max() <= 0.3 + 1e-6
    assert set(r1["attributions"]) == {"ig/clean", "ig/adv", "ig_grey/clean", "ig_grey/adv", "saliency/clean",
                                       "saliency/adv"}
    # from black, IG is zero wherever the clean image is black (IG multiplies by x - baseline); from grey it is not
    background = r1["x"][0, 0] == 0
    assert r1["attributions"]["ig/clean"][background].abs().max() == 0
    assert r1["attributions"]["ig_grey/clean"][background].abs().max() > 0
    assert r1["attributions"]["ig/clean"].shape == (28, 28)
    assert list(r1["distortion"])[0] == "input" and "logits" in r1["distortion"]
    r2 = explorer.compute("standard", "PGD Linf", 0.3, 10, 0)
    assert r2 is r1 and explorer.computed == 1          # the same object, nothing recomputed: a cache hit
    explorer.compute("standard", "FGSM", 0.3, 10, 0)
    explorer.compute("standard", "FGSM", 0.3, 40, 0)          # steps do not matter for FGSM: cached
    assert explorer.computed == 2
    # PGD-10 at eps 0.3 fools a standard MNIST model on this image (it fools it on >80% of them, test below)
    assert r1["pred_clean"] == r1["label"] != r1["pred_adv"]
    assert widgets.outcome(r1) == widgets.SUCCEEDED and explorer.summary(r1).endswith("| attack SUCCEEDED")


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
    # PGD L2 has its own slider, in L2 units (the Linf slider's 0.5 would be a negligible L2 budget)
    explorer.w_attack.value = "PGD L2"
    assert explorer.w_eps.layout.display == "none" and explorer.w_eps_l2.layout.display is None
    assert explorer.l2_max == round(0.5 * 28 / 4, 2) and explorer.w_eps_l2.max == explorer.l2_max
    key_eps = explorer.w_eps_l2.value
    explorer.w_eps_l2.value = 0.0
    assert "attack FAILED" in explorer.w_summary.value
    explorer.w_attack.value = "PGD Linf"
    assert explorer.w_eps.layout.display is None and explorer.w_eps_l2.layout.display == "none" and key_eps > 1
    # the widget prints the summary once, above the figure (no figure title repeating it)
    fig = explorer.figure(explorer.compute("standard", "PGD Linf", 0.3, 10, 0), title=None)
    assert fig._suptitle is None
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


def test_outcome_names_the_three_cases_exactly(trained_mnist, mnist_small):
    """FAILED at eps 0 on an image the model gets right; NOT NEEDED (never SUCCEEDED) when the label is not the
    model's clean prediction, whatever eps does."""
    _, _, xt, yt = mnist_small
    pred = featlab.metrics.predict(trained_mnist, xt[:4])
    assert torch.equal(pred, yt[:4]), "the fixture's model classifies these four images correctly"
    ex = AttackExplorer({"m": trained_mnist}, xt[:4], yt[:4])
    r0 = ex.compute("m", "PGD Linf", 0.0, 10, 0)
    assert widgets.outcome(r0) == widgets.FAILED and ex.summary(r0).endswith("| attack FAILED")
    wrong = yt[:4].clone()
    wrong[2] = (pred[2] + 1) % 10                        # a label the model does not predict on the clean image
    ex = AttackExplorer({"m": trained_mnist}, xt[:4], wrong)
    for eps in (0.0, 0.3):
        r = ex.compute("m", "PGD Linf", eps, 10, 2)
        assert widgets.outcome(r) == widgets.NOT_NEEDED and "attack NOT NEEDED" in ex.summary(r)


def test_a_cached_setting_costs_a_fraction_of_computing_it(explorer):
    """What one slider release costs against going back to a visited eps: a ratio measured in one run, never
    a clock limit (it replaces the latency the notebook used to print)."""
    t0 = time.perf_counter()
    explorer.compute("standard", "PGD Linf", 0.234, 10, 1)       # PGD-10, captum IG and Saliency, the probe
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    explorer.compute("standard", "PGD Linf", 0.234, 10, 1)
    cached = time.perf_counter() - t0
    assert explorer.computed == 1 and cached < fresh / 10, (fresh, cached)


def test_the_work_runs_without_ipywidgets(monkeypatch, trained_mnist, mnist_small):
    """explore, feature_distortion, success_rates and the figures are plain functions: no widget library needed.
    A denoiser pipeline gets its feature-distortion curve (input, denoised, then the classifier's taps): with an
    identity denoiser it is exactly the classifier's own curve."""
    import matplotlib.pyplot as plt
    monkeypatch.setitem(sys.modules, "ipywidgets", None)          # `import ipywidgets` now raises ImportError
    with pytest.raises(ImportError):
        import ipywidgets  # noqa: F401
    _, _, xt, yt = mnist_small
    res = widgets.explore(trained_mnist, xt[:1], yt[:1], "PGD Linf", 0.3, 10)
    pipe = Defended(nn.Identity(), trained_mnist).eval()
    own, through = res["distortion"], widgets.feature_distortion(pipe, res["x"], res["x_adv"])
    assert list(through) == ["input", "denoised"] + list(own)[1:]
    assert through["input"] == pytest.approx(own["input"]) and through["denoised"] == pytest.approx(own["input"])
    assert [through[t] for t in list(own)[1:]] == pytest.approx([own[t] for t in list(own)[1:]])
    res_pipe = widgets.explore(pipe, xt[:1], yt[:1], "PGD Linf", 0.3, 10)
    fig = widgets.explorer_figure(res_pipe, [str(i) for i in range(10)])
    panel = next(ax for ax in fig.axes if ax.get_title() == "feature distortion")
    assert len(panel.lines) == 1 and [t.get_text() for t in panel.get_xticklabels()][:2] == ["input", "denoised"]
    no_taps = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    assert widgets.feature_distortion(no_taps, res["x"], res["x_adv"]) is None
    plt.close("all")


def test_success_rates_count_the_correct_images_and_use_the_attack_model(trained_mnist, mnist_small):
    """n is the number of images the model classifies correctly; ``attack_model`` is the model the attack is
    computed on: PGD computed on an untrained network transfers poorly to the trained one."""
    _, _, xt, yt = mnist_small
    x, y = xt[:40], yt[:40]
    own = widgets.success_rates(trained_mnist, x, y, [0.0, 0.3], progress=False)
    assert own.n == int((featlab.metrics.predict(trained_mnist, x) == y).sum()) and own.rates[0] == 0.0
    assert own.rates[1] > 80 and own.eps == (0.0, 0.3)
    featlab.seed_everything(1)
    untrained = featlab.models.create("mnist_cnn").eval()
    moved = widgets.success_rates(trained_mnist, x, y, [0.0, 0.3], attack_model=untrained, progress=False)
    assert moved.n == own.n and moved.rates[1] < own.rates[1] - 30, (moved.rates, own.rates)
    # the explorer's success_curves is success_rates for every model: the same seed, the same numbers
    assert AttackExplorer({"m": trained_mnist}, x, y).success_curves([0.0, 0.3])["m"] == list(own.rates)
    # the control: random sign noise of the same size, on the same images, flips far fewer; seeded, reproducible
    noise = widgets.noise_rates(trained_mnist, x, y, [0.0, 0.1, 0.3], seed=3)
    assert noise.n == own.n and noise.rates[0] == 0.0 and noise.rates[-1] < own.rates[1] - 50, noise
    assert widgets.noise_rates(trained_mnist, x, y, [0.0, 0.1, 0.3], seed=3) == noise
    g = torch.Generator().manual_seed(3)
    ok = featlab.metrics.predict(trained_mnist, x) == y
    by_hand = [100 * float((featlab.metrics.predict(trained_mnist, featlab.probe.random_noise(x[ok], e, generator=g))
                            != y[ok]).float().mean()) for e in (0.0, 0.1, 0.3)]
    assert list(noise.rates) == by_hand
    with pytest.raises(ValueError, match="eps_list"):
        widgets.noise_rates(trained_mnist, x, y, [-0.1])
    with pytest.raises(ValueError, match="seed"):
        widgets.noise_rates(trained_mnist, x, y, [0.1], seed="a")
    with pytest.raises(ValueError, match="kind"):
        widgets.noise_rates(trained_mnist, x, y, [0.1], kind="uniform")


def test_feature_noise_explorer_static_and_widget(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    fx = FeatureNoiseExplorer({"m": trained_mnist}, xt[:16], yt[:16], [0.1, 0.3], attack_steps=3)
    box = fx.widget()
    assert fx.spatial_taps == ["conv1", "pool1", "conv2", "pool2"]
    fx_slider = box.children[0].children[0]
    fx_slider.value = 0.3
    assert set(fx._cache) == {0.1, 0.3}


@pytest.mark.parametrize("bad, match", [
    (dict(x="255"), "x must be a torch.Tensor"),
    (dict(x=lambda x: x * 255), r"x must have pixels in \[0, 1\]"),
    (dict(x=lambda x: torch.where(x > 0.5, torch.nan, x)), "x contains NaN"),
    (dict(x=lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2))), "x must be 28x28 pixels"),
    (dict(x=lambda x: x.repeat(1, 3, 1, 1)), "x must have 1 channel"),
    (dict(y=lambda y: y + 10), r"y must hold class indices in \[0, 9\]"),
    (dict(y=lambda y: y[:-1]), r"y must have shape \(20,\)"),
    (dict(y=lambda y: y.float()), "y must be an integer tensor"),
    (dict(models={}), "models: a non-empty dict"),
    (dict(models={"m": "not a model"}), r"models\['m'\]: a torch model is needed"),
])
def test_explorers_refuse_malformed_inputs_naming_them(trained_mnist, mnist_small, bad, match):
    """Both explorers check their images, labels and models against every model before any widget
    exists: malformed input is an error naming the argument, never a silent picture."""
    _, _, xt, yt = mnist_small
    x, y, models = xt[:20], yt[:20], {"standard": trained_mnist}
    x = bad["x"](x) if callable(bad.get("x")) else bad.get("x", x)
    y = bad["y"](y) if callable(bad.get("y")) else y
    models = bad.get("models", models)
    with pytest.raises((ValueError, TypeError), match=match):
        AttackExplorer(models, x, y)
    with pytest.raises((ValueError, TypeError), match=match):
        FeatureNoiseExplorer(models, x, y, [0.1])


def test_explorer_settings_are_checked(trained_mnist, mnist_small, explorer):
    _, _, xt, yt = mnist_small
    for kwargs, match in ((dict(eps_max=0), "eps_max"), (dict(cache_size=0), "cache_size"),
                          (dict(ig_steps=0), "ig_steps"), (dict(classes=["a", "b"]), "classes: one name per class")):
        with pytest.raises(ValueError, match=match):
            AttackExplorer({"m": trained_mnist}, xt[:20], yt[:20], **kwargs)
    for eps_values, match in (([], "eps_values"), ("0.1", "eps_values"), ([0.1, 2.0], r"eps_values\[...\]"),
                              ([float("nan")], r"eps_values\[...\]")):
        with pytest.raises(ValueError, match=match):
            FeatureNoiseExplorer({"m": trained_mnist}, xt[:4], yt[:4], eps_values)
    with pytest.raises(ValueError, match="eps"):
        explorer.compute("standard", "PGD Linf", -0.1, 10, 0)
    with pytest.raises(ValueError, match="steps"):
        explorer.compute("standard", "PGD Linf", 0.1, 0, 0)


def test_explorers_speak_the_dataset(trained_mnist, mnist_small):
    """dataset="cifar10": class names, eps in /255 (slider, labels, titles), the slider at 8/255; "mnist" as before."""
    import matplotlib.pyplot as plt
    featlab.seed_everything(0)
    air = featlab.models.create("cifar_airnet").eval()
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 8, 9])
    ex = AttackExplorer({"air": air}, x, y, dataset="cifar10")
    assert ex.classes == list(featlab.data.info("cifar10").classes) and ex.eps_max == 16 / 255 and ex.in_255
    assert ex.eps_label(8 / 255) == "8/255" and ex.eps_label(0.5, "PGD L2") == "0.5"
    ex.widget()
    assert ex.w_eps.value == 8.0 and ex.w_eps.max == 16.0 and ex.w_eps.description == "eps (/255)"
    assert ex.summary(ex.compute("air", "FGSM", 8 / 255, 1, 4)).startswith("label ship |")
    plt.close("all")
    _, _, xt, yt = mnist_small
    mn = AttackExplorer({"m": trained_mnist}, xt[:4], yt[:4], dataset="mnist")
    assert mn.eps_max == 0.5 and not mn.in_255 and mn.classes[3] == "3" and mn.eps_label(0.3) == "0.3"
    fx = FeatureNoiseExplorer({"air": air}, x, y, [2 / 255, 8 / 255], attack_steps=1, dataset="cifar10")
    slider = fx.widget().children[0].children[0]
    assert [label for label, _ in slider.options] == ["2/255", "8/255"]
    plt.close("all")
    with pytest.raises(ValueError, match="dataset"):
        AttackExplorer({"air": air}, x, y, dataset="svhn")


def test_figures_and_verdicts_write_eps_per_dataset():
    import matplotlib.pyplot as plt
    from featlab import viz
    rows = [{"attack": "pgd10", "eps": e, "robust_acc": 50.0 - 100 * e} for e in (2 / 255, 4 / 255, 8 / 255)]
    ax = viz.plot_robustness(rows, dataset="cifar10")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2/255", "4/255", "8/255"]
    fig = viz.show_images([torch.rand(8, 3, 32, 32)], ["clean"], titles=list("abcdefgh"))
    assert fig.axes[0].get_title() == "a"
    plt.close("all")


def test_robustness_plot_zooms_only_where_every_point_is_high_and_names_the_fast_ensemble():
    import matplotlib.pyplot as plt
    from featlab import viz
    high = [{"attack": a, "eps": e, "robust_acc": acc} for a, e, acc in
            [("pgd20", 0.1, 99.0), ("pgd20", 0.3, 95.0), ("apgd", 0.3, 88.0)]]
    ax = viz.plot_robustness(high, dataset="mnist", zoom=True)
    # apgd ran at one eps: its value label gets 7% of the span above 100, inside the frame
    assert ax.get_ylim() == pytest.approx((85.0, 101.0 + 0.07 * 16)) and "zoomed" in ax.get_ylabel()
    assert "apgd (AutoAttack fast: APGD-CE + APGD-T)" in [t.get_text() for t in ax.get_legend().get_texts()]
    low = high + [{"attack": "fgsm", "eps": 0.3, "robust_acc": 30.0}]
    assert viz.plot_robustness(low, zoom=True).get_ylim() == pytest.approx((-2.0, 102.0 + 0.07 * 104))
    assert viz.plot_robustness(high).get_ylim() == pytest.approx((-2.0, 102.0 + 0.07 * 104))   # no zoom unless asked
    assert viz.plot_robustness(high, zoom=80.0).get_ylim() == pytest.approx((80.0, 101.0 + 0.07 * 21))   # a shared bottom
    lines_only = [r for r in high if r["attack"] != "apgd"]              # no value label: no headroom
    assert viz.plot_robustness(lines_only).get_ylim() == (-2.0, 102.0)
    # the shared bottom: the lowest point of the panels that zoom (the 1.0 point is the checklist's, not drawn)
    other = [{"attack": "pgd20", "eps": 0.3, "robust_acc": 92.0}, {"attack": "pgd20", "eps": 1.0, "robust_acc": 0.0}]
    assert viz.shared_zoom([high, other]) == 85.0 and viz.shared_zoom([high, low, other]) == 85.0
    assert viz.shared_zoom([low]) == 0.0 and viz.shared_zoom([]) == 0.0
    # every line its own marker, the first the largest (coinciding points stay visible); a labelled chance line
    ax = viz.plot_robustness(high, chance=10.0)
    lines = ax.get_lines()
    assert [ln.get_marker() for ln in lines[:2]] == ["o", "s"]
    two = viz.plot_robustness(high + [{"attack": "fgsm", "eps": e, "robust_acc": 90.0} for e in (0.1, 0.3)]).get_lines()
    assert two[0].get_markersize() > two[2].get_markersize(), "of the lines (pgd20, fgsm), the first has the largest marker"
    assert "chance (10%)" in [t.get_text() for t in ax.get_legend().get_texts()] and lines[-1].get_ydata()[0] == 10.0
    # "apgd" ran at one eps only: hollow, larger and on top, so the line through the same point cannot hide it
    single = next(ln for ln in lines if len(ln.get_xdata()) == 1)
    assert single.get_markerfacecolor() == "none" and single.get_zorder() > lines[0].get_zorder()
    # ... a little right of its eps, and labelled with its value
    apgd = next(r for r in high if r["attack"] == "apgd")
    assert single.get_xdata()[0] > apgd["eps"] and f"{apgd['robust_acc']:g}" in [t.get_text() for t in ax.texts]
    assert ax.get_xlim()[1] > single.get_xdata()[0]                  # with room for its label inside the axes
    half = viz.plot_robustness([dict(r, robust_acc=97.5) if r is apgd else r for r in high])
    assert "97.5" in [t.get_text() for t in half.texts]               # not rounded to 98
    zoomed = viz.plot_robustness(high, chance=10.0, zoom=80.0)           # the line would sit off the zoomed axis
    assert "chance (10%)" not in [t.get_text() for t in zoomed.get_legend().get_texts()]
    plt.close("all")


def test_robustness_lines_that_coincide_stay_apart_and_single_points_carry_their_wilson_bar():
    import matplotlib.pyplot as plt
    from featlab import viz
    from featlab.verdicts import wilson
    rows = [{"threat_model": tm, "eps": e, "robust_acc": 99.0, "n": 100} for tm in ("oblivious", "bpda")
            for e in (0.1, 0.3)]                                          # two lines on the same numbers
    ax = viz.plot_robustness(rows + [{"threat_model": "apgd-ce (n=40)", "eps": 0.3, "robust_acc": 15.0, "n": 40}],
                             by="threat_model")
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2]
    assert lines[0].get_linestyle() != lines[1].get_linestyle() and lines[0].get_linewidth() > lines[1].get_linewidth()
    bars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(bars) == 1, "one bar: the single point with an n; the lines get none"
    segment = bars[0].lines[2][0].get_segments()[0]
    lo, hi = wilson(15.0, 40)
    assert segment[:, 1] == pytest.approx([lo, hi], abs=1e-6)
    high = [{"attack": "pgd20", "eps": e, "robust_acc": 98.0} for e in (0.1, 0.3)]
    point = {"attack": "apgd", "eps": 0.3, "robust_acc": 92.5, "n": 40}
    zoomed = viz.plot_robustness(high + [point], zoom=True)
    assert zoomed.get_ylim()[0] <= wilson(92.5, 40)[0] < 90, "a zoomed axis holds the single point's whole bar"
    assert viz.shared_zoom([high + [point]]) <= wilson(92.5, 40)[0]
    no_n = viz.plot_robustness([{"attack": "apgd", "eps": 0.3, "robust_acc": 15.0}])
    assert not [c for c in no_n.containers if getattr(c, "has_yerr", False)], "no n, no bar"
    plt.close("all")


def test_measurements_plot_draws_each_accuracy_with_its_wilson_bar_and_n():
    import matplotlib.pyplot as plt
    from featlab import viz
    from featlab.verdicts import Measurement, wilson
    ms = [Measurement("pgd20", 98.75, 80), Measurement("bpda pgd20", 0.0, 80), Measurement("square200", 3.75, 80)]
    ax = viz.plot_measurements(ms, chance=10.0)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([98.75, 0.0, 3.75])
    segments = [seg for c in ax.containers if getattr(c, "has_yerr", False) for seg in c.lines[2][0].get_segments()]
    assert [tuple(s[:, 1]) for s in segments] == [pytest.approx(wilson(m.acc, m.n)) for m in ms]
    assert "0.0%\n(n=80)" in [t.get_text() for t in ax.texts] and ax.get_xticklabels()[1].get_text() == "bpda pgd20"
    named = viz.plot_measurements(ms, labels=["a", "b", "c"])
    assert [t.get_text() for t in named.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="measurements"):
        viz.plot_measurements([])
    plt.close("all")


def test_a_live_log_plot_labels_more_than_one_tick_within_a_decade():
    import matplotlib.pyplot as plt
    from featlab import viz
    live = viz.LiveLoss(["a", "b"], every=10**9)
    for i, (a, b) in enumerate(zip(torch.linspace(0.03, 0.3, 50), torch.linspace(0.05, 0.9, 50))):
        live(i, {"a": float(a), "b": float(b)})
    ax = live.figure().axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) >= 3 and "0.1" in labels and "0.05" in labels, labels
    plt.close("all")


def test_log_axes_within_one_decade_get_plain_number_ticks():
    """The explorer's distortion panel spans 0.35-1.1: matplotlib alone labels it 4x10^-1 and 6x10^-1."""
    import matplotlib.pyplot as plt
    from featlab import viz
    _, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.35, 0.6, 1.1]), ax.set_yscale("log")
    assert viz.log_ticks(ax) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "1-2-5 gives two ticks here, so 1-9"
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["0.4", "0.5"]
    _, ax = plt.subplots()
    ax.plot([0, 1], [0.01, 3.0]), ax.set_yscale("log")
    assert viz.log_ticks(ax) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0], "two decades: 1-2-5"
    plt.close("all")


def test_distortion_curves_get_their_own_markers():
    """Two denoisers' curves that coincide (notebook 02's feature and pixel loss) must both stay visible."""
    import matplotlib.pyplot as plt
    from featlab import viz
    from featlab.probe import Distortion
    same = {t: torch.full((4,), 0.5) for t in ("input", "conv1", "logits")}
    ax = viz.plot_distortion({"a": Distortion(same, same), "b": Distortion(same, same)})
    a, b = ax.get_lines()[:2]
    assert (a.get_marker(), b.get_marker()) == ("o", "s") and a.get_markersize() > b.get_markersize()
    # the legend says what the bands are: a spread over images, not a confidence interval
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "band, in its curve's colour: 25th-75th percentile of the images"]
    styled = viz.plot_distortion({"a": Distortion(same, same)}, styles={"a": {"marker": "x"}}).get_lines()[0]
    assert styled.get_marker() == "x", "a style given by the caller wins"
    # a model that leaves most images still (a dead gradient): its band reaches 1e-5, its mean 0.1; the axis keeps
    # the mean lines readable and lets that band run off the bottom
    still = {t: torch.tensor([1e-5, 1e-5, 1e-5, 0.4]) for t in ("input", "conv1", "logits")}
    ax = viz.plot_distortion({"a": Distortion(same, same), "dead": Distortion(still, still)})
    assert ax.get_ylim()[0] == pytest.approx(0.1 / 3, rel=1e-3)
    # two panels sharing y (notebook 03): the second's higher lines are not cut by the limits the first one set
    _, (left, right) = plt.subplots(1, 2, sharey=True)
    viz.plot_distortion({"dead": Distortion(still, still)}, ax=left)
    high = {t: torch.full((4,), 8.0) for t in ("input", "conv1", "logits")}
    viz.plot_distortion({"a": Distortion(high, high), "dead": Distortion(still, still)}, ax=right)
    assert right.get_ylim()[1] >= 8.0 and left.get_ylim() == right.get_ylim()
    plt.close("all")


def test_the_embedding_plot_says_how_much_of_the_cloud_its_plane_shows():
    from featlab import viz

    class Emb(nn.Module):            # embeddings that live on two axes, exactly: the plane shows all of them
        embedding_dim = 4

        def embed(self, x):
            return torch.stack([3 * x[:, 0], x[:, 1], 0 * x[:, 0], 0 * x[:, 0]], 1)

    x = torch.randn(64, 2)
    ax = viz.plot_embeddings(Emb(), x, x + 0.1, torch.arange(64) % 3)
    assert ax.plane_share == pytest.approx(1.0, abs=1e-5)
    assert "% of the clean variance" in ax.get_xlabel() and "%" in ax.get_ylabel()
    flat = type("Flat", (Emb,), {"embed": lambda self, x: x})      # four independent directions of equal variance
    x4 = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    ax = viz.plot_embeddings(flat(), x4, x4, torch.zeros(4000, dtype=torch.long))
    assert ax.plane_share == pytest.approx(0.5, abs=0.05)            # the plane shows half of that cloud


def test_flip_eps_brackets_where_the_attack_starts_to_flip_the_image(explorer):
    grid = explorer.eps_grid()
    assert grid[0] == 0.0 and grid[1] == 0.01 and grid[-1] == 0.5       # MNIST-like: 0.01 steps to eps_max
    i = next(i for i in range(20) if int(explorer.y[i]) ==
             int(explorer.models["standard"](explorer.x[i:i + 1]).argmax()))    # an image classified correctly
    point = explorer.flip_eps("standard", index=i)
    assert point.flipped is not None and point.survived is not None     # a standard CNN falls inside 0.5
    assert grid.index(point.flipped) == grid.index(point.survived) + 1     # neighbours on the slider's grid
    # the two settings are in the cache, and what they show agrees with the bracket
    before = explorer.computed
    assert widgets.outcome(explorer.compute("standard", "PGD Linf", point.flipped, 10, i)) is widgets.SUCCEEDED
    assert widgets.outcome(explorer.compute("standard", "PGD Linf", point.survived, 10, i)) is widgets.FAILED
    assert explorer.computed == before
    assert len(explorer.eps_grid("PGD L2")) == round(explorer.l2_max / 0.05) + 1


def test_live_loss_draws_the_running_mean_of_noisy_steps():
    from featlab import viz
    live = viz.LiveLoss(["loss"], every=1000, log=False, smooth=4)
    for step, v in enumerate([4.0, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0]):
        live(step, {"loss": v})
    raw, mean = live.figure().axes[0].lines
    assert list(raw.get_ydata()) == live.values["loss"]
    assert list(mean.get_ydata()) == pytest.approx([4.0, 2.0, 8 / 3, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert "mean of the last 4 steps" in mean.get_label()
    named = viz.LiveLoss({"acc": "D right"}, every=1000, log=False, ylabel="accuracy (%)", chance=50)
    named(0, {"acc": 60.0})
    ax = named.figure().axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["D right", "chance (50%)"] and ax.get_ylim() == (0, 100)
    assert ax.get_ylabel() == "accuracy (%)"
    share = viz.LiveLoss({"left": "share"}, every=1000, log=False, ylim=(0.0, 1.05))
    for step, v in enumerate([0.73, 0.72]):
        share(step, {"left": v})
    assert share.figure().axes[0].get_ylim() == (0.0, 1.05)          # a fixed scale, not zoomed on 0.72-0.73
    share(2, {"left": 1.2})
    assert share.figure().axes[0].get_ylim() == (0.0, 1.2)           # widened to show a value above it
    with pytest.raises(ValueError, match="smooth"):
        viz.LiveLoss(smooth=-1)


def test_explorer_figures_at_several_eps_share_one_perturbation_scale(explorer):
    import matplotlib.pyplot as plt
    titles = []
    for eps in (0.05, 0.2):
        fig = explorer.figure(explorer.compute("standard", "PGD Linf", eps, 5, 0))
        titles.append(next(a.get_title() for a in fig.axes if a.get_title().startswith("x_adv - x")))
        dist = next(a for a in fig.axes if a.get_title() == "feature distortion")
        assert dist.get_ylim()[0] <= 0.01 and dist.get_ylim()[1] >= 3.0
    assert titles[0] == titles[1] == f"x_adv - x: black -{explorer.eps_default:.2g}, grey 0, white +{explorer.eps_default:.2g}"
    plt.close("all")


def test_show_images_captions_a_row_and_marks_the_words_that_differ_from_the_titles():
    from featlab import viz
    x = torch.rand(3, 1, 8, 8)
    fig = viz.show_images([x, x], ["clean", "adversarial"], n=3, titles=["7", "2", "1"], captions=[None, ["7", "3", "1"]])
    row = [a for a in fig.axes[3:]]
    assert [a.get_title() for a in fig.axes[:3]] == ["7", "2", "1"]
    assert [a.get_title() for a in row] == ["7", "3", "1"]
    red = [a.title.get_color() != "black" for a in row]
    assert red == [False, True, False]                   # only the image read as another class
    with pytest.raises(ValueError, match="captions must have one entry per row"):
        viz.show_images([x, x], ["a", "b"], n=3, captions=[None])


def test_legend_below_puts_each_label_once_under_the_panels():
    import matplotlib.pyplot as plt
    from featlab import viz
    rows = lambda acc: [{"attack": a, "eps": e, "robust_acc": acc} for a in ("fgsm", "pgd20") for e in (0.1, 0.3)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    viz.plot_robustness(rows(20.0), ax=axes[0], chance=10.0)         # the chance line on the unzoomed panel only
    viz.plot_robustness(rows(95.0), ax=axes[1], chance=10.0, zoom=True)
    bottom = viz.legend_below(fig, axes, ncol=2)
    assert all(ax.get_legend() is None for ax in axes), "the panels' own legends are gone"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fgsm", "pgd20", "chance (10%)"]
    assert 0 < bottom < 0.5
    plt.close("all")
