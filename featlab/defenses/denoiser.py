"""The feature-loss denoising autoencoder (Sivamani, "Feature Losses for Adversarial
Robustness", https://arxiv.org/abs/1912.04497): the denoiser architectures and the feature loss.

A denoiser D is put in front of any classifier f; it is trained on (x_adv, x) pairs so that
feature maps phi_l(D(x_adv)) of a frozen feature extractor match phi_l(x) (a perceptual loss),
optionally plus a pixel term. At test time the defended model is f(D(x)).

    >>> den = create_denoiser("bottleneck", channels=1)   # or "unet", "residual" (DENOISERS)
    >>> loss = FeatureLoss(classifier, taps={"conv1": 1.0, "conv2": 1.0}, pixel_weight=0.0)
    >>> defended = featlab.models.Defended(den, classifier)   # an nn.Module: logits of f(D(x))

Training it is a Trainer objective: :class:`featlab.train.DenoiserObjective`.

Introduced in notebooks/02_feature_loss_denoiser.ipynb.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from .._utils import borrowed, check_number


def _block(cin: int, cout: int) -> nn.Sequential:
    # no BatchNorm: the denoiser behaves the same in train and eval mode, for training and attacks alike
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNetDenoiser(nn.Module):
    """A small U-Net (encoder-decoder with skip connections); output in [0, 1], same shape as input.

    Args:
        channels: image channels (1 MNIST, 3 CIFAR).
        width: channels of the first level (doubles per level; default 16).
        depth: number of down-sampling levels (default 2; input sides must divide 2**depth).

    Output: per pixel a learned gate g in (0, 1) mixes the input with new content,
    ``x * (1 - g) + g * sigmoid(c)``: always in [0, 1], close to the identity at initialisation
    (gate bias -4), and smooth everywhere, so end-to-end attacks are not blocked by clamping.

    Shape: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """

    arch = "unet"

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 2):
        super().__init__()
        _check_shape_args(channels, width, depth)
        self.channels, self.width, self.depth = channels, width, depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.bottom = _block(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], self._out_channels(channels), 1)
        self._init_output()

    def _out_channels(self, channels: int) -> int:
        return 2 * channels                                  # a gate and a content map per channel

    def _init_output(self) -> None:
        with torch.no_grad():                                # start near the identity: gate ~ 0.018
            self.out.bias[:self.channels].fill_(-4.0)

    def config(self) -> dict[str, Any]:
        """What rebuilds this denoiser (:func:`create_denoiser`): arch, channels, width, depth."""
        return {"arch": self.arch, "channels": self.channels, "width": self.width, "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_denoiser_input(self, x)
        skips, h = [], x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottom(h)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = dec(torch.cat([up(h), skip], dim=1))
        return self._output(x, self.out(h))

    def _output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        gate, content = out.chunk(2, dim=1)
        g = torch.sigmoid(gate)
        return x * (1 - g) + g * torch.sigmoid(content)   # a convex mix of x and new content: in [0, 1]


class ResidualDenoiser(UNetDenoiser):
    """The U-Net predicting the perturbation, as the HGD denoiser does (Liao et al. 2018, arXiv
    1712.02976): ``x_hat = clamp(x - r(x), 0, 1)``. Same body and arguments as :class:`UNetDenoiser`.

    The output starts at the identity (r = 0: the last layer is zero-initialised). The clamp keeps
    [0, 1]; its gradient is zero only where x - r leaves the box.
    """

    arch = "residual"

    def _out_channels(self, channels: int) -> int:
        return channels

    def _init_output(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return (x - out).clamp(0.0, 1.0)


class BottleneckDenoiser(nn.Module):
    """A convolutional autoencoder without skip connections: every output pixel is rebuilt from a code at
    1/2**depth of the input's resolution, so a small perturbation has no full-resolution path to be
    copied through (the U-Net's skips are such a path).

    Encoder: a 3x3 conv, then ``depth`` stride-2 3x3 convs doubling the width; decoder: ``depth``
    stride-2 transposed convs back; each conv followed by BatchNorm and ReLU; output ``sigmoid`` of a
    3x3 conv, in [0, 1].

    Args:
        channels: image channels (1 MNIST, 3 CIFAR).
        width: channels at full resolution (default 32; doubles per level).
        depth: number of stride-2 levels (default 2; 28x28 -> 7x7; sides must divide 2**depth).

    Shape: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """

    arch = "bottleneck"

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 2):
        super().__init__()
        _check_shape_args(channels, width, depth)
        self.channels, self.width, self.depth = channels, width, depth
        w = [width * 2 ** i for i in range(depth + 1)]
        bn_relu = lambda c: [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 3, padding=1, bias=False), *bn_relu(w[0])]
        for i in range(depth):
            layers += [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1, bias=False), *bn_relu(w[i + 1])]
        self.encoder = nn.Sequential(*layers)
        layers = []
        for i in reversed(range(depth)):
            layers += [nn.ConvTranspose2d(w[i + 1], w[i], 4, stride=2, padding=1, bias=False), *bn_relu(w[i])]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(w[0], channels, 3, padding=1))

    config = UNetDenoiser.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_denoiser_input(self, x)
        return torch.sigmoid(self.decoder(self.encoder(x)))


def _check_shape_args(channels: int, width: int, depth: int) -> None:
    check_number("channels", channels, low=1, integer=True)
    check_number("width", width, low=1, integer=True)
    check_number("depth", depth, low=1, integer=True)


def _check_denoiser_input(den: nn.Module, x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != den.channels:
        raise ValueError(f"x must have shape (N, {den.channels}, H, W), got {tuple(x.shape)}")
    side = 2 ** den.depth
    if x.shape[2] % side or x.shape[3] % side:
        raise ValueError(f"x: height and width must be multiples of {side} for depth {den.depth}, "
                         f"got {tuple(x.shape[2:])}")


DENOISERS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNetDenoiser, "residual": ResidualDenoiser, "bottleneck": BottleneckDenoiser}


def create_denoiser(arch: str, channels: int = 1, width: int | None = None, depth: int = 2) -> nn.Module:
    """A denoiser by name (``DENOISERS``): "bottleneck" (no skips), "unet" (gated U-Net, starts at the
    identity) or "residual" (U-Net predicting the perturbation, HGD-style). ``width`` defaults to each
    architecture's own (32 bottleneck, 16 U-Nets)."""
    if arch not in DENOISERS:
        raise ValueError(f"arch: unknown denoiser {arch!r}; allowed: {sorted(DENOISERS)}")
    kwargs = {"channels": channels, "depth": depth}
    if width is not None:
        kwargs["width"] = width
    return DENOISERS[arch](**kwargs)


class FeatureLoss(nn.Module):
    """Perceptual loss: sum_l w_l * mean (phi_l(x_hat) - phi_l(x))^2  +  pixel_weight * mean (x_hat - x)^2.

    Args:
        extractor: a featlab model whose ``features`` give phi. It is used frozen and in eval mode
            during each call and left exactly as the caller had it (no gradients reach its
            parameters; its mode and ``requires_grad`` flags are untouched).
        taps: tap name -> weight w_l (default: every spatial tap of the extractor, weight 1).
        pixel_weight: weight of the pixel MSE term (default 0).

    ``forward(x_hat, x)`` returns the scalar loss; ``terms(x_hat, x)`` returns each term.
    """

    def __init__(self, extractor: nn.Module, taps: Mapping[str, float] | None = None, pixel_weight: float = 0.0):
        super().__init__()
        if not hasattr(extractor, "features"):
            raise TypeError("extractor must be a featlab model with features(x, layers)")
        check_number("pixel_weight", pixel_weight, low=0.0)
        # borrowed, not owned: not a submodule (the loss's train()/to()/state_dict leave it alone), used
        # frozen and in eval mode during each call and given back unchanged (featlab._utils.borrowed)
        object.__setattr__(self, "extractor", extractor)
        if taps is None:
            c, h, w = extractor.input_shape
            device = next(extractor.parameters()).device
            with torch.no_grad(), borrowed(extractor):
                shapes = extractor.features(torch.zeros(1, c, h, w, device=device))
            taps = {k: 1.0 for k, v in shapes.items() if v.dim() == 4}
        taps = dict(taps)
        if taps:
            extractor._resolve(list(taps))      # unknown tap names raise a ValueError naming them
        for k, w in taps.items():
            check_number(f"taps[{k!r}]", w, low=0.0)
        if not any(w > 0 for w in taps.values()) and pixel_weight == 0:
            raise ValueError("taps/pixel_weight: FeatureLoss has no active term: give a tap a weight > 0 "
                             "or pixel_weight > 0")
        self.taps, self.pixel_weight = taps, float(pixel_weight)

    def terms(self, x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        names = [k for k, w in self.taps.items() if w > 0]
        out: dict[str, torch.Tensor] = {}
        if names:
            with borrowed(self.extractor):
                with torch.no_grad():
                    target = self.extractor.features(x, names)
                got = self.extractor.features(x_hat, names)
            for k in names:
                out[f"feat/{k}"] = self.taps[k] * (got[k] - target[k]).pow(2).mean()
        if self.pixel_weight > 0:
            out["pixel"] = self.pixel_weight * (x_hat - x).pow(2).mean()
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.terms(x_hat, x).values())).sum()
