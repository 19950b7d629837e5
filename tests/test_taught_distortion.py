"""Notebook 01's taught relative distortion (plain PyTorch) against featlab.probe: the same images, the same numbers
per image and tap. If either drifts (the norm, the reference, a tap), this fails."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featlab
from featlab import probe
from featlab.nbtools import taught

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_feature_noise.ipynb"


@pytest.mark.parametrize("name,shape", [("mnist_cnn", (1, 28, 28)), ("cifar_airnet", (3, 32, 32))])
def test_taught_relative_distortion_is_featlabs(name, shape):
    relative_distortion = taught(NOTEBOOK)["relative_distortion"]
    torch.manual_seed(0)
    model = featlab.models.create(name).eval()
    x = torch.rand(12, *shape)
    x_pert = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    taps = probe.default_taps(model)
    ours, lib = relative_distortion(model, x, x_pert, taps), probe.distortion(model, x, x_pert)
    assert list(lib.l2)[1:] == taps, "the probe measures the same taps, after the pixels"
    for tap in taps:
        assert ours[tap].shape == (12,)
        torch.testing.assert_close(ours[tap], lib.l2[tap], rtol=1e-5, atol=1e-7)
    assert all(float(ours[t].min()) > 0 for t in taps), "a perturbation moves every tap"
