from collections import OrderedDict

import pytest
import torch
from torch import nn

import featlab
from featlab import probe
from featlab.models.base import FeatureModel, Normalize


def linear_model():
    """features: 'lin' = W x + b (identity normalisation), logits = V lin."""
    torch.manual_seed(0)
    enc = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("lin", nn.Linear(16, 5))]))
    return FeatureModel(Normalize([0.0], [1.0]), enc, nn.Linear(5, 3), (1, 4, 4), 3, name="linear")


def test_zero_perturbation_gives_zero_distortion(tiny):
    x = torch.rand(5, 1, 8, 8)
    d = probe.distortion(tiny, x, x.clone())
    assert d.taps == ["input"] + probe.default_taps(tiny)
    for norm in ("l2", "linf"):
        assert all(v == 0.0 for v in d.mean(norm).values())


def test_linear_model_matches_closed_form():
    m = linear_model().eval()
    x = torch.rand(6, 1, 4, 4)
    delta = 0.05 * torch.randn(6, 1, 4, 4)
    xp = (x + delta).clamp(0, 1)
    d = probe.distortion(m, x, xp, layers=["lin", "logits"])
    W, b, V = m.encoder.lin.weight, m.encoder.lin.bias, m.head.weight
    with torch.no_grad():
        xf, df = x.flatten(1), (xp - x).flatten(1)
        f = xf @ W.T + b
        want_l2 = (df @ W.T).norm(dim=1) / f.norm(dim=1)
        want_linf = (df @ W.T).abs().amax(1) / f.abs().amax(1)
        g = f @ V.T + m.head.bias
        want_logits = (df @ W.T @ V.T).norm(dim=1) / g.norm(dim=1)
    assert torch.allclose(d.l2["lin"], want_l2, rtol=1e-4)
    assert torch.allclose(d.linf["lin"], want_linf, rtol=1e-4)
    assert torch.allclose(d.l2["logits"], want_logits, rtol=1e-4)
    assert torch.allclose(d.l2["input"], df.norm(dim=1) / xf.norm(dim=1), rtol=1e-5)
    assert d.mean()["lin"] == pytest.approx(float(want_l2.mean()), rel=1e-4)


def test_unknown_tap_and_shape_errors(tiny):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"unknown tap name\(s\) \['conv7'\].*allowed"):
        probe.distortion(tiny, x, x, layers=["conv7"])
    with pytest.raises(ValueError, match="must have the shape of x"):
        probe.distortion(tiny, x, x[:1])
    with pytest.raises(ValueError, match="kind must be one of"):
        probe.random_noise(x, 0.1, kind="pink")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        probe.random_noise(x, -0.1)


def test_batching_does_not_change_results(tiny):
    x = torch.rand(10, 1, 8, 8)
    xp = probe.random_noise(x, 0.1, generator=torch.Generator().manual_seed(0))
    a = probe.distortion(tiny, x, xp, batch_size=3)
    b = probe.distortion(tiny, x, xp, batch_size=100)
    for k in a.taps:
        assert torch.allclose(a.l2[k], b.l2[k], atol=1e-6)


def test_random_noise_has_the_asked_size():
    x = torch.full((4, 1, 8, 8), 0.5)
    s = probe.random_noise(x, 0.1, kind="sign")
    assert torch.allclose((s - x).abs(), torch.full_like(x, 0.1), atol=1e-6)
    g = probe.random_noise(x, 0.1, kind="gaussian", norm="linf")
    assert torch.allclose((g - x).flatten(1).abs().amax(1), torch.full((4,), 0.1), atol=1e-6)
    g2 = probe.random_noise(x, 0.4, kind="gaussian", norm="l2")
    assert torch.allclose((g2 - x).flatten(1).norm(dim=1), torch.full((4,), 0.4), atol=1e-5)


def test_amplification_and_table(tiny):
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    res = probe.sweep({"tiny": tiny}, x, y, [0.1], attack_steps=3)["tiny"][0.1]
    amp = probe.amplification(res["adversarial"], res["random-sign"])
    assert set(amp) == set(res["adversarial"].taps)
    rows = probe.table(res)
    assert [r["set"] for r in rows] == ["adversarial", "random-sign", "random-gaussian"]


def test_adversarial_beats_random_on_trained_mnist(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    res = probe.sweep({"m": trained_mnist}, xt[:200], yt[:200], [0.1], attack_steps=10)["m"][0.1]
    amp = probe.amplification(res["adversarial"], res["random-sign"])
    assert amp["embedding"] > 1.5 and amp["logits"] > amp["input"]


def test_centroid_accuracy_sees_embeddings_leave_their_class(tiny):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 8, 8, generator=g) * 0.3
    y = torch.arange(60) % 3
    x = (x + 0.3 * y.view(-1, 1, 1, 1)).clamp(0, 1)          # classes sit apart in brightness
    same = probe.centroid_accuracy(tiny, x, x.clone(), y)
    assert same["clean"] == same["adversarial"]
    swapped = x[(torch.arange(60) + 1) % 60]                   # every image replaced by one of another class
    moved = probe.centroid_accuracy(tiny, x, swapped, y)
    assert moved["clean"] > 60 and moved["adversarial"] < 40
    with pytest.raises(ValueError, match="x_adv must have the shape"):
        probe.centroid_accuracy(tiny, x, x[:10], y)


def one_hot_embedding_model(active: int):
    """An encoder whose ReLU embedding has ``active`` positive coordinates on images near mid-grey, then unit length
    (as mnist_resnet's): with one active coordinate the embedding is the same one-hot vector for every nearby image."""
    from featlab.models.base import L2Normalize
    lin = nn.Linear(16, 6)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 16) * 0.01)
        lin.bias.copy_(torch.tensor([1.0] * active + [-1.0] * (6 - active)))
    enc = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("lin", lin), ("relu", nn.ReLU()),
                                     ("unit", L2Normalize())]))
    return FeatureModel(Normalize([0.5], [0.5]), enc, nn.Linear(6, 3), (1, 4, 4), 3, name=f"active{active}")


def test_embedding_activity_counts_active_coordinates_and_one_active_kills_the_input_gradient():
    torch.manual_seed(0)
    x, y = 0.5 + 0.1 * torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    one, four = one_hot_embedding_model(1), one_hot_embedding_model(4)
    a1, a4 = probe.embedding_activity(one, x), probe.embedding_activity(four, x)
    assert (a1["dim"], a1["median_active"], a1["one_active"], a1["normalised"]) == (6, 1.0, 100.0, 1.0)
    assert (a4["median_active"], a4["one_active"], a4["none_active"]) == (4.0, 0.0, 0.0)
    # why it matters: one active coordinate + unit length = a constant embedding, so no gradient reaches the pixels
    # (exactly zero for most images; float rounding in the unit-length step leaves a few ~1e-9 residues)
    g1, g4 = featlab.metrics.input_gradient_stats(one, x, y), featlab.metrics.input_gradient_stats(four, x, y)
    assert g1["dead_fraction"] >= 50.0 and g1["median_grad_norm"] < 1e-6
    assert g4["dead_fraction"] == 0.0 and g4["median_grad_norm"] > 1e-3
    # without the unit-length step the counts are of the encoder's own output
    assert probe.embedding_activity(linear_model(), torch.rand(3, 1, 4, 4))["normalised"] == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        probe.embedding_activity(one, x, batch_size=0)
    with pytest.raises(TypeError, match="featlab model"):
        probe.embedding_activity(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), x)


def test_ratio_interval_keeps_pairs_and_brackets_the_ratio():
    g = torch.Generator().manual_seed(0)
    b = 1 + 9 * torch.rand(50, generator=g, dtype=torch.float64)      # spread over images
    # a is 1.1 b image by image: every paired resampling gives exactly 1.1 (an unpaired one would scatter widely)
    value, low, high = probe.ratio_interval(1.1 * b, b)
    assert value == pytest.approx(1.1, abs=1e-12) and low == pytest.approx(1.1, abs=1e-12)
    assert high == pytest.approx(1.1, abs=1e-12)
    # independent noise: the interval holds the ratio of means, excludes 1 for a clear gap, and repeats exactly
    a = 2 * b + torch.randn(50, generator=g)
    r = probe.ratio_interval(a, b, n_boot=500, seed=3)
    assert r[0] == pytest.approx(float(a.mean() / b.mean()))
    assert 1 < r[1] < r[0] < r[2] < 3
    assert r == probe.ratio_interval(a, b, n_boot=500, seed=3)
    # the same values, no gap: 1 lies inside the interval
    c = b[torch.randperm(50, generator=g)]
    v, lo, hi = probe.ratio_interval(c, b)
    assert lo < 1 < hi and v == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        probe.ratio_interval(a, b[:10])
    with pytest.raises(ValueError, match="level must be"):
        probe.ratio_interval(a, b, level=1.0)
    with pytest.raises(ValueError, match="mean 0"):
        probe.ratio_interval(a, torch.zeros(50))


def test_bootstrap_interval_of_any_statistic_keeps_every_array_paired():
    g = torch.Generator().manual_seed(1)
    sa, sr = 1 + torch.rand(40, generator=g, dtype=torch.float64), 1 + torch.rand(40, generator=g, dtype=torch.float64)
    # notebook 01's edge ratio of two models: the second moves exactly half as far under both perturbations, image by
    # image, so every paired resampling gives exactly 1 (an unpaired one would scatter)
    edge = lambda a, b, c, d: (a / b) / (c / d)
    value, low, high = probe.bootstrap_interval(edge, sa, sr, sa / 2, sr / 2)
    assert value == pytest.approx(1.0, abs=1e-12) and low == pytest.approx(1.0, abs=1e-12) and high == pytest.approx(1.0, abs=1e-12)
    # the ratio is this function on two arrays, draw for draw
    assert probe.ratio_interval(sa, sr, seed=4) == probe.bootstrap_interval(lambda a, b: a / b, sa, sr, seed=4)
    with pytest.raises(ValueError, match="one length N >= 2"):
        probe.bootstrap_interval(edge, sa, sr[:5], sa, sr)
    with pytest.raises(ValueError, match="n_boot"):
        probe.bootstrap_interval(edge, sa, sr, sa, sr, n_boot=0)


def test_the_probe_measures_the_embedding_once_not_also_as_the_encoders_last_stage():
    import featlab
    from featlab import probe
    m = featlab.models.create("mnist_cnn")
    assert m.tap_names[-3:] == ("fc1", "embedding", "logits")
    assert probe.default_taps(m) == ["conv1", "pool1", "conv2", "pool2", "embedding", "logits"]
    x = torch.rand(4, 1, 28, 28)
    d = probe.compare(m, x, {"noise": (x + 0.1).clamp(0, 1)})["noise"]
    assert d.taps == ["input", "conv1", "pool1", "conv2", "pool2", "embedding", "logits"]
    # the stage still answers when asked for by name, and it is the same tensor as the embedding
    both = probe.compare(m, x, {"noise": (x + 0.1).clamp(0, 1)}, layers=["fc1", "embedding"])["noise"]
    assert torch.equal(both.l2["fc1"], both.l2["embedding"])
