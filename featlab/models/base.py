"""The base class of every featlab classifier: normalisation inside, encoder/head split, taps."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

from .._utils import check_images, inside_checked_scope


class Normalize(nn.Module):
    """(x - mean) / std per channel; x in [0, 1]. Buffers, so they follow .to(device)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class L2Normalize(nn.Module):
    """Scale each embedding to unit L2 norm (the AFD code's feature normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1)


class FeatureModel(nn.Module):
    """A classifier ``head(encoder(normalize(x)))`` whose intermediate outputs are named taps.

    ``encoder`` is an ``nn.Sequential`` of named stages; the output of each stage is a tap of
    that name, the encoder's output is also the tap ``"embedding"`` and the head's output the
    tap ``"logits"``. Inputs are pixels in [0, 1], shape (N, C, H, W).

    Attributes:
        tap_names: every tap, shallow to deep.
        input_shape: (C, H, W) the model expects; num_classes: number of logits.
    """

    def __init__(self, normalize: Normalize, encoder: nn.Sequential, head: nn.Module,
                 input_shape: tuple[int, int, int], num_classes: int, name: str = ""):
        super().__init__()
        self.normalize, self.encoder, self.head = normalize, encoder, head
        self.input_shape, self.num_classes, self.name = tuple(input_shape), num_classes, name
        stages = [n for n, _ in encoder.named_children()]
        self.tap_names: tuple[str, ...] = tuple(stages) + ("embedding", "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.head(self.encoder(self.normalize(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output (N, D): the embedding AFD's discriminator sees."""
        self._check(x)
        return self.encoder(self.normalize(x))

    @property
    def embedding_dim(self) -> int:
        """The width of the embedding: the input features of the head's first linear layer."""
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                return m.in_features
        raise AttributeError(f"embedding_dim: the head of {self.name or type(self).__name__} has no nn.Linear")

    def _check(self, x: torch.Tensor) -> None:
        """Every forward: the shape and dtype this model was built for. The values (finite, in [0, 1])
        too, except inside featlab's entry points, which check a batch once and then run many passes
        on it (``featlab._utils.inputs_checked``). A 32x32 image given to a 28x28 model, 1 channel to a
        3-channel one, or pixels in 0..255 fail here instead of giving a number: adaptive pooling and a
        broadcasting Normalize would accept them."""
        self._check_shape(x)
        if not inside_checked_scope():
            self.check_input(x)

    def _check_shape(self, x: torch.Tensor) -> None:
        """The shape and dtype (metadata only, no device sync)."""
        c, h, w = self.input_shape
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w) or x.shape[0] == 0 \
                or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            dtype = f", dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""
            raise ValueError(f"x: {self.name} takes float images of shape (N, {c}, {h}, {w}) with N >= 1 and pixels "
                             f"in [0, 1]; got {shape}{dtype}")

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        c, h, w = self.input_shape
        check_images(x, name=name, channels=c, size=(h, w))

    def _resolve(self, layers: Iterable[str] | str | None) -> list[str]:
        if layers is None:
            return list(self.tap_names)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        unknown = [l for l in layers if l not in self.tap_names]
        if unknown:
            raise ValueError(f"layers: unknown tap name(s) {unknown} for {self.name or type(self).__name__}; "
                             f"allowed: {list(self.tap_names)}")
        if not layers:
            raise ValueError(f"layers must name at least one tap; allowed: {list(self.tap_names)}")
        return layers

    def features(self, x: torch.Tensor, layers: Iterable[str] | str | None = None) -> "OrderedDict[str, torch.Tensor]":
        """Run one forward pass and return the requested taps (all by default), shallow to deep.

        Stops after the deepest requested tap, so asking for an early layer is cheap. ``x`` is checked
        like :meth:`forward`'s (shape for this model, finite, in [0, 1]): a probe must not measure an
        input it does not understand.
        """
        self._check(x)
        wanted = self._resolve(layers)
        need = set(wanted)
        order = {n: i for i, n in enumerate(self.tap_names)}
        last = max(order[n] for n in wanted)
        out: dict[str, torch.Tensor] = {}
        h = self.normalize(x)
        for i, (n, stage) in enumerate(self.encoder.named_children()):
            if i > last:
                break
            h = stage(h)
            if n in need:
                out[n] = h
        if "embedding" in need:
            out["embedding"] = h
        if "logits" in need:
            out["logits"] = self.head(h)
        return OrderedDict((n, out[n]) for n in sorted(out, key=order.__getitem__))
