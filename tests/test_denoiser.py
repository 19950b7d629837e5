import pytest
import torch

import featlab
from featlab.attacks import BPDA, PGD
from featlab.models import Defended
from featlab.train import DenoiserObjective
from featlab.defenses import FeatureLoss, UNetDenoiser
from featlab.evaluate import preprocessing_defense
from featlab.train import Trainer
from conftest import tiny_model


def test_denoiser_output_in_unit_range_and_shape_preserving():
    for channels, side in ((1, 28), (3, 32)):
        d = UNetDenoiser(channels=channels, width=8, depth=2)
        x = torch.rand(3, channels, side, side)
        with torch.no_grad():
            out = d(x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        UNetDenoiser(1, 8, 2)(torch.rand(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\)"):
        UNetDenoiser(3, 8, 2)(torch.rand(1, 1, 32, 32))


def test_feature_loss_zero_when_reconstruction_is_exact():
    m = featlab.models.create("mnist_cnn")
    loss = FeatureLoss(m, pixel_weight=1.0)
    x = torch.rand(4, 1, 28, 28)
    assert loss(x.clone(), x).item() == 0.0
    assert set(loss.taps) == {"conv1", "pool1", "conv2", "pool2"}
    assert float(loss(x.flip(0), x)) > 0
    terms = loss.terms(x.flip(0), x)
    assert set(terms) == {"feat/conv1", "feat/pool1", "feat/conv2", "feat/pool2", "pixel"}


def test_feature_loss_keeps_extractor_frozen_and_checks_taps():
    m = featlab.models.create("mnist_cnn")
    loss = FeatureLoss(m, taps={"conv2": 1.0})
    x_hat = torch.rand(2, 1, 28, 28, requires_grad=True)
    loss(x_hat, torch.rand(2, 1, 28, 28)).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())
    loss.train()
    assert m.training and all(p.requires_grad for p in m.parameters()), "the caller's model is left as it was"
    with pytest.raises(ValueError, match="unknown tap name"):
        FeatureLoss(m, taps={"conv9": 1.0})
    with pytest.raises(ValueError, match="no active term"):
        FeatureLoss(m, taps={})
    assert FeatureLoss(m, taps={}, pixel_weight=1.0).taps == {}      # the pixel-loss ablation


def test_defended_puts_denoiser_in_front_of_any_classifier():
    den = UNetDenoiser(1, 8, 2)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for name in ("mnist_cnn", "mnist_resnet"):
        clf = featlab.models.create(name).eval()
        d = Defended(den, clf).eval()
        assert torch.allclose(d(x), clf(den(x)))
        assert d.num_classes == 10
        x_adv = PGD(d, eps=0.1, steps=2)(x, y)       # featlab attacks take it like any model
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="x must have 1 channel"):
        PGD(Defended(den, clf), eps=0.1)(torch.rand(2, 3, 28, 28), y[:2])


def test_bpda_gradient_is_identity_through_preprocessing():
    clf = tiny_model()
    scale = torch.nn.Sequential()                      # identity preprocess vs a gradient-blocking one

    class Round(torch.nn.Module):
        def forward(self, x):
            return torch.round(x * 4) / 4              # zero gradient almost everywhere

    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    g_plain = PGD(clf, eps=0.1).input_grad(x, y)
    g_bpda = BPDA(Round(), clf, eps=0.1).input_grad(x, y)
    g_masked = PGD(Defended(Round(), clf), eps=0.1).input_grad(x, y)
    assert g_masked.abs().sum() == 0, "rounding masks the gradient"
    xr = Round()(x)
    assert torch.allclose(g_bpda, PGD(clf, eps=0.1).input_grad(xr, y), atol=1e-6)
    assert torch.allclose(BPDA(scale, clf, eps=0.1).input_grad(x, y), g_plain, atol=1e-6)


def test_denoiser_objective_trains_only_the_denoiser(tmp_path):
    clf = tiny_model().eval()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    den = UNetDenoiser(1, 4, 1)
    obj = DenoiserObjective(clf, FeatureLoss(clf, taps={"conv": 1.0}, pixel_weight=1.0), eps_range=(0.05, 0.2),
                            pgd_steps=2)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 3, (32,))
    den_before = [p.clone() for p in den.parameters()]
    h = Trainer(den, obj, epochs=2, batch_size=16, device="cpu", progress=False,
                checkpoint=str(tmp_path / "d.pt")).fit(x, y, eval_data=(x, y))
    assert {"feat/conv", "pixel", "clean_term", "eps", "clean_acc"} <= set(h[0])
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items()), "the classifier must stay frozen"
    assert any(not torch.equal(a, b) for a, b in zip(den_before, den.parameters()))
    state = featlab.checkpoint.load(tmp_path / "d.pt")
    assert "rng" in state["objective"]


def test_wrappers_keep_a_batchnorm_classifier_in_eval_mode():
    clf = featlab.models.create("mnist_resnet").eval()          # has BatchNorm
    den = UNetDenoiser(1, 4, 1)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    rows = preprocessing_defense(den, clf, x, y, [0.1], steps=2, progress=False)
    assert len(rows) == 4 and not clf.training and den.training     # each module keeps its own mode
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items()), "BatchNorm statistics moved"
    assert not Defended(den, clf).training                          # the pipeline's flag: its classifier's


def _snapshot(m: torch.nn.Module):
    return ({k: v.clone() for k, v in m.state_dict().items()}, [(n, mod.training) for n, mod in m.named_modules()],
            [(n, p.requires_grad, p.grad) for n, p in m.named_parameters()])


def _same(m: torch.nn.Module, snap) -> bool:
    state, modes, flags = snap
    return (all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
            and [(n, mod.training) for n, mod in m.named_modules()] == modes
            and [(n, p.requires_grad, p.grad) for n, p in m.named_parameters()] == flags)


def test_no_side_effects_on_the_callers_models():
    """Building a FeatureLoss, a DenoiserObjective or a Defended, and using them, leaves the caller's
    classifier (in train mode, BatchNorm, trainable) and denoiser exactly as they were."""
    clf = featlab.models.create("mnist_resnet")          # train mode, requires_grad everywhere, BatchNorm
    den = UNetDenoiser(1, 4, 1).eval()                    # a mode different from the classifier's
    snap_c, snap_d = _snapshot(clf), _snapshot(den)
    loss = FeatureLoss(clf)
    obj = DenoiserObjective(clf, loss, pgd_steps=1)
    pipe = Defended(den, clf)
    assert _same(clf, snap_c) and _same(den, snap_d), "building them changed the caller's models"
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    x_hat = den(x).detach().requires_grad_(True)
    loss(x_hat, x).backward()
    assert x_hat.grad.abs().sum() > 0
    featlab.metrics.robust_accuracy(pipe, x, y, PGD(pipe, eps=0.1, steps=1), progress=False)
    obj.make_pairs(x, y)
    assert _same(clf, snap_c), "using the loss, the objective or the pipeline changed the classifier"
    assert _same(den, snap_d), "evaluating the pipeline changed the denoiser"


def test_three_threat_models_rows(mnist_small, trained_mnist):
    _, _, xt, yt = mnist_small
    den = UNetDenoiser(1, 8, 2)
    rows = preprocessing_defense(den, trained_mnist, xt[:50], yt[:50], [0.1], steps=3, progress=False)
    assert [r["threat_model"] for r in rows] == ["none", "oblivious", "end-to-end", "bpda"]
    by = {r["threat_model"]: r for r in rows}
    assert by["none"]["clean_acc"] == pytest.approx(featlab.metrics.accuracy(trained_mnist, xt[:50], yt[:50]))
    assert by["none"]["robust_acc"] < by["none"]["clean_acc"]           # PGD at 0.1 hurts the bare classifier
    assert all(r["robust_acc"] <= r["clean_acc"] for r in rows)
    assert by["end-to-end"]["robust_acc"] <= by["oblivious"]["robust_acc"]


def test_median_filter():
    from featlab.defenses import MedianFilter
    x = torch.full((1, 1, 5, 5), 0.2)
    x[0, 0, 2, 2] = 1.0                                   # one salt pixel
    out = MedianFilter(3)(x)
    assert out.shape == x.shape and torch.allclose(out, torch.full_like(x, 0.2))
    assert torch.equal(MedianFilter(1)(x), x)
    with pytest.raises(ValueError, match="size: the window must be odd"):
        MedianFilter(2)


def test_binarisation_is_flagged_when_attacked_end_to_end_and_with_bpda(trained_mnist, mnist_small):
    """Binarisation in front of a standard CNN: its gradient is zero, so end-to-end PGD learns nothing
    from it, BPDA is not fooled by that, and the checklist says so."""
    from featlab.defenses import Quantize
    from featlab.checklist import checklist
    _, _, xt, yt = mnist_small
    rows = preprocessing_defense(Quantize(1), trained_mnist, xt[:100], yt[:100], [0.3], steps=10, progress=False)
    by = {r["threat_model"]: r["robust_acc"] for r in rows}
    checks = {c["check"]: c["passed"] for c in checklist([r for r in rows if r["threat_model"] != "none"], n=100)}
    assert by["bpda"] < by["end-to-end"] - 10, by
    assert checks["end-to-end at least as strong as BPDA"] is False, checks


def test_median_filter_passes_gradients():
    """Unlike rounding, the median passes a gradient (to one pixel per window): it is a weak smoother,
    not a masking example, and end-to-end attacks see through it."""
    from featlab.defenses import MedianFilter
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    MedianFilter(3)(x).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["bottleneck", "unet", "residual"])
def test_every_denoiser_architecture_keeps_shape_range_and_rebuilds_from_its_config(arch):
    from featlab.defenses import create_denoiser
    for channels, side in ((1, 28), (3, 32)):
        d = create_denoiser(arch, channels=channels, width=8, depth=2).eval()
        x = torch.rand(3, channels, side, side)
        with torch.no_grad():
            out = d(x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        again = create_denoiser(**d.config())
        again.load_state_dict(d.state_dict())           # the config names the exact architecture
        with torch.no_grad():
            assert torch.equal(again.eval()(x), out)
    with pytest.raises(ValueError, match="multiples of 4"):
        create_denoiser(arch, 1, 8, 2)(torch.rand(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"arch: unknown denoiser 'vae'; allowed: \['bottleneck', 'residual', 'unet'\]"):
        create_denoiser("vae")


def test_residual_denoiser_starts_at_the_identity_and_bottleneck_has_no_full_resolution_path():
    from featlab.defenses import create_denoiser
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(create_denoiser("residual", 1)(x), x)
    # no skip: one output pixel depends on a wide window of the input (through the 7x7 code), and the
    # input pixel under it is not copied: its gradient is of the order of its neighbours'
    d = create_denoiser("bottleneck", 1, width=8).eval()
    xr = x[:1].clone().requires_grad_(True)
    d(xr)[0, 0, 14, 14].backward()
    g = xr.grad[0, 0].abs()
    assert (g > 0).sum() > 49                                    # a receptive field wider than 7x7
    assert g[14, 14] < 0.5 * g.sum()                             # the centre pixel is not passed through


def test_denoiser_training_lowers_the_feature_distance_it_trains_on(mnist_small, trained_mnist):
    """A bottleneck denoiser trained on 512 images lowers the feature loss on those images' adversarial
    pairs, against the same denoiser untrained (a fixed set of pairs: the loss it minimises)."""
    from featlab.defenses import create_denoiser
    x, y, _, _ = mnist_small
    x, y = x[:512], y[:512]
    clf = trained_mnist.eval()
    torch.manual_seed(0)
    den = create_denoiser("bottleneck", 1, width=8)
    loss = FeatureLoss(clf)
    obj = DenoiserObjective(clf, loss, eps_range=(0.1, 0.3), pgd_steps=3, seed=0)
    x_adv = PGD(clf, eps=0.3, steps=5, step_size=0.075)(x, y)
    with torch.no_grad():
        before = float(loss(den.eval()(x_adv), x))
    Trainer(den, obj, epochs=3, batch_size=64, device="cpu", progress=False,
            optimizer=torch.optim.Adam(den.parameters(), lr=3e-3)).fit(x, y)
    with torch.no_grad():
        after = float(loss(den.eval()(x_adv), x))
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", ["binarize", "bits2", "bits4", "median3"])
def test_controls_by_name(name):
    from featlab.defenses import create_control
    c = create_control(name)
    x = torch.rand(2, 1, 28, 28)
    out = c(x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    if name.startswith("bi"):
        levels = 2 if name == "binarize" else 2 ** int(name[4:])
        assert len(torch.unique(out)) <= levels
    with pytest.raises(ValueError, match="name: unknown control 'jpeg'; allowed"):
        create_control("jpeg")


def test_denoiser_objective_logs_the_share_of_the_loss_it_leaves():
    """"left" = loss(D(x_adv), x) / loss(x_adv, x): exactly 1 for the identity, below 1 for a D that removes some of
    the attack, above 1 for one that adds to it."""
    clf = tiny_model().eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    obj = DenoiserObjective(clf, FeatureLoss(clf, taps={"conv": 1.0}, pixel_weight=1.0), eps_range=(0.1, 0.2), pgd_steps=2)
    x_adv, _, _ = obj.make_pairs(x, y)
    obj.make_pairs = lambda xb, yb: (x_adv, 0.1, "pgd")          # this pair every time

    def left(fn):
        return float(obj.loss(fn, x, y)[2]["left"])

    assert left(torch.nn.Identity()) == pytest.approx(1.0, abs=1e-6)
    assert left(lambda z: x + 0.5 * (z - x)) < 0.9               # halfway back to the clean images
    assert left(lambda z: (x + 2.0 * (z - x)).clamp(0, 1)) > 1.2      # the perturbation doubled (in [0, 1])
