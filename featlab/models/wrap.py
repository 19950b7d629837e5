"""A reader's own classifier as a featlab model: :func:`wrap` puts its normalisation inside (so it takes
pixels in [0, 1], as every featlab attack and defense does) and names its intermediate outputs as taps,
found by torchvision's feature extraction (``torchvision.models.feature_extraction``).

    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> model = wrap(net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), input_shape=(3, 32, 32))
    >>> model.tap_names
    ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4', 'avgpool', 'embedding', 'logits')

The wrapped model works wherever a featlab classifier does: attacks, ``featlab.evaluate.audit`` and its
checklist, the probe of notebook 01, behind a denoiser (``Defended``) and as the feature loss's extractor.
AFD needs an encoder/head split and is for featlab's own models.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

from .._utils import check_number
from .base import FeatureModel, Normalize


def _graph_nodes(module: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names
    try:
        return list(get_graph_node_names(module.eval())[1])
    except Exception as e:          # FX cannot trace data-dependent control flow
        raise ValueError(f"module: torch.fx cannot trace {type(module).__name__} ({str(e).splitlines()[0]}); "
                         f"name taps it can trace, or rewrite the branching forward") from None


class WrappedModel(FeatureModel):
    """A module wrapped by :func:`wrap`: ``net(normalize(x))``, with taps from torchvision's feature
    extraction. Same interface as :class:`FeatureModel` (``features``, ``embed``, ``tap_names``,
    ``input_shape``, ``num_classes``), without an ``encoder``/``head`` split."""

    def __init__(self, net: nn.Module, normalize: Normalize, input_shape: tuple[int, int, int], num_classes: int,
                 taps: dict[str, str], name: str):
        nn.Module.__init__(self)            # FeatureModel's own __init__ wants an nn.Sequential encoder
        self.normalize, self.net = normalize, net
        self.input_shape, self.num_classes, self.name = tuple(input_shape), num_classes, name
        self.tap_names = tuple(taps)        # tap name -> graph node, shallow to deep; ends embedding, logits
        self._nodes = dict(taps)
        from torchvision.models.feature_extraction import create_feature_extractor
        # not a submodule: it shares the net's leaf modules (parameters and buffers follow .to()), and the
        # state dict stays the net's own
        object.__setattr__(self, "_extractor", create_feature_extractor(net, return_nodes={v: k for k, v in taps.items()}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.net(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, "embedding")["embedding"].flatten(1)

    @property
    def embedding_dim(self) -> int:
        return int(self.embed(torch.full((1, *self.input_shape), 0.5, device=self.normalize.mean.device)).shape[1])

    def train(self, mode: bool = True) -> "WrappedModel":
        super().train(mode)
        self._extractor.train(mode)          # the extractor's containers are its own; their leaves are the net's
        return self

    def features(self, x: torch.Tensor, layers: Iterable[str] | str | None = None) -> "OrderedDict[str, torch.Tensor]":
        self._check(x)
        wanted = self._resolve(layers)
        out = self._extractor(self.normalize(x))
        return OrderedDict((n, out[n]) for n in wanted)


def wrap(module: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         input_shape: Sequence[int] = (3, 32, 32), num_classes: int | None = None,
         taps: Sequence[str] | None = None, embedding: str | None = None, name: str | None = None) -> WrappedModel:
    """Wrap any classifier ``module`` (a torchvision CNN, your own ``nn.Module``) as a featlab model.

    Args:
        module: maps a normalised batch (N, C, H, W) to logits (N, classes).
        mean, std: the per-channel normalisation the module was trained with (None: it takes [0, 1] pixels).
        input_shape: (C, H, W) of its images.
        num_classes: checked against the module's output (default: read from it).
        taps: graph nodes to expose as taps (names from
            ``torchvision.models.feature_extraction.get_graph_node_names``; a module's name stands for its
            last node). Default: the module's top-level children except the last.
        embedding: the node that is the embedding (default: the node just before the logits).
        name: the model's name in reports (default: the module's class name).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: an nn.Module is needed, got {type(module).__name__}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"input_shape: (channels, height, width) of positive ints, got {input_shape!r}")
    c = shape[0]
    mean = [0.0] * c if mean is None else [float(m) for m in mean]
    std = [1.0] * c if std is None else [float(s) for s in std]
    for arg, vals in (("mean", mean), ("std", std)):
        if len(vals) != c:
            raise ValueError(f"{arg}: one value per channel ({c} for input_shape {shape}), got {len(vals)}")
    for s in std:
        check_number("std", s, low=0.0, low_open=True)
    nodes = _graph_nodes(module)
    children = [n for n, _ in module.named_children()]
    if taps is None:
        taps = [n for n in children[:-1] if n in nodes or any(k.startswith(n + ".") for k in nodes)]
    unknown = [t for t in taps if t not in nodes and not any(k.startswith(t + ".") for k in nodes)]
    if unknown:
        raise ValueError(f"taps: {unknown} are not nodes of {type(module).__name__}; allowed: {nodes}")
    logits_node = nodes[-1]
    embedding = embedding or nodes[-2]
    if embedding not in nodes:
        raise ValueError(f"embedding: {embedding!r} is not a node of {type(module).__name__}; allowed: {nodes}")
    tap_map = {t: t for t in taps if t not in (embedding, logits_node)}
    tap_map.update(embedding=embedding, logits=logits_node)
    normalize = Normalize(mean, std)
    with torch.no_grad():
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        was_training = module.training
        out = module.eval()(normalize.to(device)(torch.full((2, *shape), 0.5, device=device)))
        module.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"module: must map (N, {', '.join(map(str, shape))}) to logits (N, classes); "
                         f"got output shape {tuple(out.shape)}")
    if num_classes is not None:
        check_number("num_classes", num_classes, low=2, integer=True)
        if num_classes != out.shape[1]:
            raise ValueError(f"num_classes: {num_classes}, but the module gives {out.shape[1]} logits")
    model = WrappedModel(module, Normalize(mean, std), shape, int(out.shape[1]), tap_map,
                         name or type(module).__name__)
    return model.to(device).train(was_training)
