"""Notebook 03's written-out discriminator (``SpectralNormalized``, ``ProjectionD``) is featlab's ProjectionDiscriminator.

Given the library's weights and power-iteration vectors, the cell's D must give the same scores, the same gradients
and the same u, v after each use in train mode, and leave u, v alone in eval mode. A different rule (v before u, no
clone of u and v, sigma from ``u @ W @ v``'s order, a missing bias) shows here.
"""
import copy
from pathlib import Path

import pytest
import torch

from featlab.defenses import ProjectionDiscriminator
from featlab.nbtools import taught

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_afd.ipynb"
LAYERS = {"W1": lambda D: D.phi[0], "W2": lambda D: D.phi[2], "w": lambda D: D.linear, "V": lambda D: D.embed}


@pytest.fixture(scope="module")
def cells():
    return taught(NOTEBOOK)


def _pair(cells, dim, classes, seed=0, fresh_estimate=False):
    """The library's D and the cell's, with the same weights and u, v. ``fresh_estimate``: u, v redrawn at random
    (the library's 15 initial steps leave them converged, where the order of the steps hardly shows)."""
    torch.manual_seed(seed)
    lib = ProjectionDiscriminator(dim, classes)
    mine = cells["ProjectionD"](dim, classes)
    with torch.no_grad():
        for name, get in LAYERS.items():
            sn, m = get(lib).parametrizations.weight, getattr(mine, name)
            if fresh_estimate:
                for t in (sn[0]._u, sn[0]._v):
                    t.copy_(torch.nn.functional.normalize(torch.randn_like(t), dim=0))
            m.weight.copy_(sn.original), m.u.copy_(sn[0]._u), m.v.copy_(sn[0]._v)
        mine.b1.copy_(lib.phi[0].bias), mine.b2.copy_(lib.phi[2].bias), mine.b.copy_(lib.linear.bias)
    return lib, mine


def _state(lib, mine):
    """(library, written-out) pairs: every weight's gradient and every u, v."""
    out = []
    for name, get in LAYERS.items():
        sn, m = get(lib).parametrizations.weight, getattr(mine, name)
        out += [(sn.original.grad, m.weight.grad), (sn[0]._u, m.u), (sn[0]._v, m.v)]
    return out


@pytest.mark.parametrize("dim,classes,fresh", [(64, 10, False), (192, 10, False), (32, 100, True), (64, 10, True)])
def test_written_out_discriminator_is_featlabs(cells, dim, classes, fresh):
    lib, mine = _pair(cells, dim, classes, fresh_estimate=fresh)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 48, dim, generator=g)
    y = torch.randint(0, classes, (48,), generator=g)
    u_before = mine.W1.u.clone()
    for D in (lib, mine):
        D.train()
        s = [D(h[i], y) for i in range(3)]                 # three uses: three power-iteration steps per matrix
        (s[2].mean() - s[0].mean() + s[1].pow(2).mean()).backward()
        D.scores = torch.stack(s).detach()
    torch.testing.assert_close(mine.scores, lib.scores, rtol=1e-6, atol=1e-6)
    for a, b in _state(lib, mine):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert (mine.W1.u - u_before).abs().max() > 1e-6, "train mode moved the estimate"
    for b in (mine.b1, mine.b2, mine.b):
        assert b.grad is not None and b.grad.abs().sum() > 0


def test_eval_mode_keeps_the_estimate_and_normalises(cells):
    lib, mine = _pair(cells, 64, 10)
    lib.eval(), mine.eval()
    h, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    before = [t.clone() for t in (mine.W1.u, mine.W1.v, mine.V.u)]
    with torch.no_grad():
        torch.testing.assert_close(mine(h, y), lib(h, y), rtol=1e-6, atol=1e-6)
        for t, b in zip((mine.W1.u, mine.W1.v, mine.V.u), before):
            assert torch.equal(t, b), "eval mode: no power-iteration step"
        # after the library's 15 initial steps sigma is W's largest singular value to a few parts in a thousand
        for name in LAYERS:
            assert abs(torch.linalg.matrix_norm(getattr(mine, name)(), 2).item() - 1) < 0.05, name


def test_a_wrong_order_of_the_power_iteration_differs(cells):
    """The check can fail: v updated before u gives other scores after one use (from an estimate not yet converged)."""
    lib, mine = _pair(cells, 64, 10, fresh_estimate=True)
    wrong = copy.deepcopy(mine).train()
    W = wrong.W1.weight.detach()
    with torch.no_grad():
        wrong.W1.v.copy_(torch.nn.functional.normalize(W.t() @ wrong.W1.u, dim=0))
    lib.train(), mine.train()
    h, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    torch.testing.assert_close(mine(h, y), copy.deepcopy(lib)(h, y), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(wrong(h, y), lib(h, y), rtol=1e-6, atol=1e-6)
