"""Pretrained MNIST models shipped with featlab, so notebooks run on a laptop without training.

The weights live next to this file (``<name>.pt``, float16 state dicts, 0.25 MB for the small
ResNets and denoisers, 6.5 MB for each Madry CNN: its 3136x1024 layer is most of it) and are listed in ``manifest.json`` with their SHA-256, the run that trained them
(command, epochs, device, wall time) and its headline numbers. Loading checks the hash first
and then reads the file with ``weights_only=True``: a tampered or truncated file is refused.

    >>> model = featlab.pretrained.load("mnist_afd")           # an alias of mnist_resnet_afd
    >>> defended = featlab.pretrained.defended("mnist_denoiser_feature")   # denoiser + its classifier
    >>> featlab.pretrained.available()

``export(run_dir, name)`` (or ``featlab export --run runs/x --name y``) adds a trained run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
ALIASES = {"mnist_standard": "mnist_cnn_standard", "mnist_pgd_at": "mnist_cnn_pgd_at",
           "mnist_trades": "mnist_resnet_trades", "mnist_afd": "mnist_resnet_afd"}


def manifest(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    p = Path(path) if path is not None else MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def available() -> list[str]:
    """Names of the shipped models (aliases resolve to them: see ``ALIASES``)."""
    return sorted(manifest())


def _entry(name: str, folder: Path) -> tuple[str, dict[str, Any]]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string; allowed: {available()}")
    man = manifest(folder / "manifest.json")
    key = ALIASES.get(name, name)
    if key not in man:
        raise ValueError(f"name: no pretrained model {name!r}; allowed: "
                         f"{sorted(man) + sorted(a for a, t in ALIASES.items() if t in man)}")
    return key, man[key]


def _state(key: str, entry: dict[str, Any], folder: Path) -> dict[str, torch.Tensor]:
    path = folder / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: {path} is missing (reinstall featlab, or git checkout the file)")
    digest = ckpt.sha256(path)
    if digest != entry["sha256"]:
        raise ckpt.CheckpointError(f"pretrained: {path} has SHA-256 {digest[:16]}..., the manifest says "
                                   f"{entry['sha256'][:16]}...; the file is damaged or was replaced, refusing it")
    state = ckpt.load(path)["model"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _build(entry: dict[str, Any]) -> nn.Module:
    from .. import data, models
    if entry["kind"] == "denoiser":
        from ..defenses import create_denoiser
        return create_denoiser(entry.get("arch", "unet"), channels=entry["channels"], width=entry["width"],
                               depth=entry["depth"])
    return models.create(entry["model"], num_classes=data.info(entry["dataset"]).num_classes)


def load(name: str, device: str | torch.device = "cpu", folder: str | os.PathLike | None = None) -> nn.Module:
    """The pretrained model ``name`` in eval mode (a classifier, or for a denoiser the denoiser alone)."""
    folder = Path(folder) if folder is not None else HERE
    key, entry = _entry(name, folder)
    model = _build(entry)
    model.load_state_dict(_state(key, entry, folder))
    return model.to(device).eval()


def info(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest entry: training command, epochs, device, wall time, headline numbers."""
    return dict(_entry(name, Path(folder) if folder is not None else HERE)[1])


def defended(name: str, device: str | torch.device = "cpu", folder: str | os.PathLike | None = None) -> nn.Module:
    """A pretrained denoiser in front of the classifier it was trained for (``Defended``)."""
    from ..defenses import Defended
    folder = Path(folder) if folder is not None else HERE
    _, entry = _entry(name, folder)
    if entry["kind"] != "denoiser":
        raise ValueError(f"name: {name!r} is a classifier; defended() takes a denoiser: "
                         f"{[k for k, e in manifest(folder / 'manifest.json').items() if e['kind'] == 'denoiser']}")
    return Defended(load(name, device, folder), load(entry["classifier"], device, folder)).eval()


def export(run_dir: str | os.PathLike, name: str, folder: str | os.PathLike | None = None,
           classifier: str | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Copy a run's weights (float16) into the pretrained folder and record them in the manifest.

    ``classifier``: for a denoiser run, the pretrained name of its classifier (must be exported too).
    """
    run = Path(run_dir)
    folder = Path(folder) if folder is not None else HERE
    if not re.fullmatch(r"[a-z0-9_]+", str(name)):
        raise ValueError(f"name: {name!r} must be lowercase letters, digits and underscores (it becomes a file name)")
    config = json.loads((run / "config.json").read_text())
    state = ckpt.load(run / "checkpoint.pt")
    man = manifest(folder / "manifest.json")
    kind = "denoiser" if config["method"] == "denoiser" else "classifier"
    if kind == "denoiser":                           # validate everything before writing anything
        if classifier is None or man.get(classifier, {}).get("kind") != "classifier":
            raise ValueError(f"classifier: a denoiser needs the pretrained name of its classifier, exported first; "
                             f"got {classifier!r}, shipped classifiers: "
                             f"{[k for k, e in man.items() if e['kind'] == 'classifier']}")
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    shape = {"kind": kind, "model": config["model"], "dataset": config["dataset"]}
    if kind == "denoiser":
        convs = [v for v in state["model"].values() if v.dim() == 4]
        shape.update(arch=config.get("arch", "unet"), width=config["width"], depth=config["depth"],
                     channels=int(convs[0].shape[1]) if convs else 0)
    try:                    # the weights must build the model the config names, before anything is written
        _build(shape).load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"run_dir: the weights in {run / 'checkpoint.pt'} do not fit the model its config.json "
                         f"names ({config['model']}, {config['dataset']}): {str(e).splitlines()[0]}") from None
    out = ckpt.save({"model": weights}, folder / f"{name}.pt")
    history = state.get("history", [])
    entry: dict[str, Any] = {
        "file": out.name, "sha256": ckpt.sha256(out), "kind": kind,
        "model": config["model"], "dataset": config["dataset"], "method": config["method"],
        "epochs": len(history), "train_command": config.get("command"), "train_device": config.get("device"),
        "train_wall_s": round(sum(h.get("time_s", 0.0) for h in history), 1), "objective": config.get("objective"),
        "history": history, "metrics": metrics or {}}
    if kind == "denoiser":
        entry.update(classifier=classifier, arch=shape["arch"], width=shape["width"], depth=shape["depth"],
                     channels=shape["channels"])
    man[name] = entry
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / "manifest.json")
    return out
