"""Attack specs (featlab.attacks.from_spec, parse), the step rule, featlab.evaluate.sweep's rows, and
AutoAttack as torchattacks builds it."""

import pytest
import torch

import featlab
from featlab.attacks import PGD, autoattack, from_spec
from featlab.evaluate import sweep
from featlab.metrics import robust_accuracy
from conftest import tiny_model


def test_sweep_rows_and_bad_arguments(tiny):
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    rows = sweep(tiny, x, y, ["fgsm", "pgd5"], [0.0, 0.1], progress=False)
    assert [(r["attack"], r["eps"]) for r in rows] == [("fgsm", 0.0), ("fgsm", 0.1), ("pgd5", 0.0), ("pgd5", 0.1)]
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"]
    with pytest.raises(ValueError, match="eps must be >= 0"):
        sweep(tiny, x, y, ["fgsm"], [-0.1], progress=False)
    with pytest.raises(ValueError, match="eps_list: give at least one eps"):
        sweep(tiny, x, y, ["fgsm"], [], progress=False)
    with pytest.raises(ValueError, match="unknown attack spec 'cw'"):
        sweep(tiny, x, y, ["cw"], [0.1], progress=False)


@pytest.mark.parametrize("spec,cls,fields", [
    ("fgsm", "FGSM", {}), ("pgd", "PGD", {"steps": 40, "step_size": 2.5 * 0.3 / 40}),
    ("pgd40@0.01", "PGD", {"steps": 40, "step_size": 0.01}), ("pgd10x2_l2@0.05", "PGD", {"step_size": 0.05, "restarts": 2}),
    ("pgd20x3", "PGD", {"steps": 20, "restarts": 3}), ("pgd10_l2", "PGD", {"norm": "l2"}),
    ("square", "Square", {"n_queries": 5000, "norm": "linf"}), ("square300", "Square", {"n_queries": 300}),
])
def test_from_spec(tiny, spec, cls, fields):
    atk = from_spec(spec, tiny, 0.3)
    # torchattacks' attacks come wrapped as featlab attacks (they check their input); the wrapped one is .attack
    assert type(getattr(atk, "attack", atk)).__name__ == cls
    for k, v in fields.items():
        assert getattr(atk, k) == pytest.approx(v) if isinstance(v, float) else getattr(atk, k) == v


@pytest.mark.parametrize("spec", ["pgdx", "pgd10_l3", "pgd10xz", "apgd-dlr", "pgd0", "pgd10x0", "square0", "squarex",
                                  "pgd40@0", "pgd40@", "pgd40@x", "pgd40@0.01_l2"])
def test_from_spec_rejects_bad_specs(tiny, spec):
    with pytest.raises(ValueError, match="allowed: fgsm, pgdN"):
        from_spec(spec, tiny, 0.1)


def test_one_step_rule_at_every_eps(tiny):
    """A spec means the same attack at every eps: its step is 2.5 * eps / steps (no special case at
    eps 0.3), unless the spec names its step."""
    for spec, steps in (("pgd40", 40), ("pgd10", 10), ("pgd7x2_l2", 7)):
        for eps in (0.1, 0.3, 0.35, 8 / 255):
            assert from_spec(spec, tiny, eps).step_size == pytest.approx(2.5 * eps / steps)
    assert {from_spec("pgd40@0.01", tiny, eps).step_size for eps in (0.1, 0.3, 0.35)} == {0.01}


def test_from_spec_norms(tiny):
    with pytest.raises(ValueError, match="fgsm is an Linf attack"):
        from_spec("fgsm", tiny, 0.5, norm="l2")
    assert from_spec("pgd10", tiny, 0.5, norm="l2").norm == "l2"
    assert from_spec("pgd10_linf", tiny, 0.1, norm="l2").norm == "linf"
    assert featlab.attacks.strongest_pgd(["pgd40", "pgd10x5", "fgsm"]) == "pgd10x5"
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    rows = sweep(tiny, x, y, ["pgd3_linf", "pgd3"], [0.5], norm="l2", progress=False)
    assert [r["norm"] for r in rows] == ["linf", "l2"]


def test_autoattack_builds_from_torchattacks_with_full_iterations():
    pytest.importorskip("torchattacks")
    tiny = tiny_model(num_classes=4)          # APGD-T's DLR loss needs 4 classes (3 is refused by name)
    std = autoattack(tiny, eps=0.3)
    names = [type(a).__name__ for a in std.attacks]
    assert names == ["APGD", "APGDT", "FAB", "Square"]
    assert all(a.steps == 100 for a in std.attacks[:3]) and std.attacks[3].n_queries == 5000
    assert [type(a).__name__ for a in autoattack(tiny, eps=0.3, version="fast").attacks] == ["APGD", "APGDT"]
    with pytest.raises(ValueError, match="version must be one of"):
        autoattack(tiny, eps=0.3, version="plus")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        autoattack(tiny, eps=-1)


def test_autoattack_fast_is_at_least_as_strong_as_pgd(trained_mnist, mnist_small):
    pytest.importorskip("torchattacks")
    _, _, xt, yt = mnist_small
    x, y = xt[:200], yt[:200]
    featlab.seed_everything(0)
    pgd = robust_accuracy(trained_mnist, x, y, PGD(trained_mnist, eps=0.1, steps=20), progress=False)
    aa = robust_accuracy(trained_mnist, x, y, autoattack(trained_mnist, eps=0.1, version="fast", steps=20),
                         progress=False)
    x_adv = autoattack(trained_mnist, eps=0.1, version="fast", steps=20)(x[:40], y[:40])   # in the ball, in [0, 1]
    assert (x_adv - x[:40]).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert aa <= pgd + 1.0, (aa, pgd)
