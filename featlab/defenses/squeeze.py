"""Bit-depth reduction (Xu et al. 2018, "Feature Squeezing", arXiv 1704.01155) as a preprocessing step.

Rounding pixels to ``2**bits`` levels has a zero gradient almost everywhere, so gradient attacks
run against ``Defended(Quantize(8), model)`` find nothing and the model *looks* robust (with 8
bits on MNIST the rounding changes no pixel, so there is no real robustness at all). It is
the classic example of gradient masking: BPDA (backward pass as identity) breaks it. featlab
uses it to show, and to test, that its evaluation checklist catches such a defense
(notebooks/05_honest_evaluation.ipynb).
"""
from __future__ import annotations

import torch
from torch import nn

from .._utils import check_number


class Quantize(nn.Module):
    """x -> round(x * (2**bits - 1)) / (2**bits - 1); bits=1 binarises at 0.5. Shape-preserving, [0, 1]."""

    def __init__(self, bits: int = 1):
        super().__init__()
        check_number("bits", bits, low=1, high=16, integer=True)
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class MedianFilter(nn.Module):
    """Median smoothing over a ``size`` x ``size`` window per channel (Xu et al. 2018, "Feature
    Squeezing"), edges padded by reflection. Shape-preserving, [0, 1] in and out.

    A control for preprocessing defenses: it removes isolated pixel changes without any learning, so
    it sets the bar an oblivious number must clear. Unlike rounding it passes a gradient (to the median
    pixel of each window), so end-to-end PGD sees through it; it is a weak smoother, not a masking
    example.
    """

    def __init__(self, size: int = 3):
        super().__init__()
        check_number("size", size, low=1, integer=True)
        if size % 2 == 0:
            raise ValueError(f"size: the window must be odd (centred on the pixel), got {size}; allowed: 1, 3, 5, ...")
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        k, pad = self.size, self.size // 2
        n, c, h, w = x.shape
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        patches = nn.functional.unfold(padded, kernel_size=k)              # N, C*k*k, H*W
        return patches.view(n, c, k * k, h * w).median(dim=2).values.view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"


CONTROLS: dict[str, tuple[type, dict]] = {
    "binarize": (Quantize, {"bits": 1}), "bits2": (Quantize, {"bits": 2}), "bits4": (Quantize, {"bits": 4}),
    "median3": (MedianFilter, {"size": 3})}


def create_control(name: str) -> nn.Module:
    """A preprocessing control by name (``CONTROLS``): binarize (rounding at 0.5), bits2 / bits4 (bit-depth
    reduction), median3 (3x3 median filter)."""
    if name not in CONTROLS:
        raise ValueError(f"name: unknown control {name!r}; allowed: {sorted(CONTROLS)}")
    cls, kwargs = CONTROLS[name]
    return cls(**kwargs)
