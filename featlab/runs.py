"""Run folders of ``featlab train``: ``config.json`` (what was trained, how), ``checkpoint.pt``
(weights, optimiser states and history; resumable, loaded with ``weights_only``) and
``history.json``. Read in one place, by the CLI and by :func:`featlab.pretrained.export`.

    >>> run = featlab.runs.load("runs/mnist_pgd_at")
    >>> run.model, run.config["method"], len(run.history)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import data, models
from .defenses import create_denoiser

FILES = ("config.json", "checkpoint.pt")


def folder_of(path: str | os.PathLike) -> Path:
    """The run folder of ``path``: the folder itself, or the folder of its ``checkpoint.pt``."""
    p = Path(path)
    if p.suffix == ".pt":
        if p.name != "checkpoint.pt":
            raise ValueError(f"run: a run folder's checkpoint is checkpoint.pt (next to its config.json), not {p.name}")
        return p.parent
    return p


def missing_files(path: str | os.PathLike) -> list[str]:
    """The files a run folder needs that ``path`` lacks ([] for a run folder)."""
    folder = folder_of(path)
    return [f for f in FILES if not (folder / f).is_file()]


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, checkpoint state) of a run folder, each read once; errors name the missing file."""
    folder = folder_of(path)
    missing = missing_files(folder)
    if missing:
        raise FileNotFoundError(f"run: {folder} is not a featlab run folder (no {' or '.join(missing)})")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise ValueError(f"run: {folder / 'config.json'} is not readable JSON ({e})") from None
    return config, ckpt.load(folder / "checkpoint.pt")


def build_model(config: dict[str, Any]) -> nn.Module:
    """The untrained module a run's config (or a pretrained manifest entry) names: a denoiser (``method``
    "denoiser": its ``arch``, ``channels``, ``width``, ``depth``) or a classifier (``model`` for ``dataset``)."""
    if config["method"] == "denoiser":
        missing = [k for k in ("channels", "width", "depth") if k not in config]
        if missing:
            raise ValueError(f"config: a denoiser's config names its {', '.join(missing)} (featlab train writes them)")
        return create_denoiser(config.get("arch", "unet"), channels=int(config["channels"]), width=config["width"],
                               depth=config["depth"])
    return models.create(config["model"], num_classes=data.info(config["dataset"]).num_classes)


def train_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Epochs trained and their wall time, as result records and the pretrained manifest give them."""
    return {"epochs": len(history), "train_wall_s": round(sum(h.get("time_s", 0.0) for h in history), 1)}


@dataclass
class Run:
    """A trained run: its module (eval mode; a denoiser run's denoiser), config and per-epoch history."""

    folder: Path
    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_summary(self) -> dict[str, Any]:
        """Epochs trained and their wall time, for result records."""
        return train_summary(self.history)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a run folder (or its ``checkpoint.pt``): the trained module on ``device``, in eval mode."""
    config, state = read(path)
    weights = state.get("model", state)
    model = build_model(config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"run: {folder_of(path)}/checkpoint.pt does not fit the model its config.json "
                                   f"names: {str(e).splitlines()[0]}") from None
    return Run(folder_of(path), model.to(device).eval(), config, list(state.get("history", [])))
