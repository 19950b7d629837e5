"""Pretrained MNIST and CIFAR-10 models shipped with featlab, so notebooks run on a laptop without training.

The weights live next to this file (``<name>.safetensors``, float16 state dicts, 0.25 MB for the
small ResNets and denoisers, 2.3 MB for each CIFAR-10 airnet, 6.5 MB for each Madry CNN: its
3136x1024 layer is most of it) and are listed in ``manifest.json`` with their SHA-256, the run that
trained them (command, epochs, device, wall time) and its headline numbers. Loading checks the hash
first and then reads the file with ``safetensors`` (raw tensors and a JSON header, no pickle:
loading cannot execute code): a tampered, truncated or replaced file is refused, and so is one that
is not safetensors (an old ``.pt`` pickle).
Training checkpoints (``featlab.checkpoint``) keep their own format: they hold optimizer state too.

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

import safetensors.torch
import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import runs
from ..models import Defended

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
FORMAT = "featlab-pretrained-safetensors-1"     # recorded in each file's safetensors metadata
ALIASES = {"mnist_standard": "mnist_cnn_standard", "mnist_pgd_at": "mnist_cnn_pgd_at",
           "mnist_trades": "mnist_resnet_trades", "mnist_afd": "mnist_resnet_afd"}


def manifest(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    p = Path(path) if path is not None else MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def available(kind: str | None = None) -> list[str]:
    """Names of the shipped models (aliases resolve to them: see ``ALIASES``); ``kind`` "classifier" or
    "denoiser" keeps those."""
    return sorted(k for k, e in manifest().items() if kind is None or e["kind"] == kind)


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
    try:
        state = safetensors.torch.load_file(path, device="cpu")
    except Exception as e:          # SafetensorError (a pickle, an HTML page, a truncated header), OSError, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ckpt.CheckpointError(f"pretrained: {path} is not a safetensors file ({type(e).__name__}: {msg}); "
                                   f"pretrained weights are read only as safetensors (an old .pt pickle must be "
                                   f"re-exported with `featlab export`), refusing it") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _write(weights: dict[str, torch.Tensor], path: Path, name: str) -> Path:
    """Save ``weights`` as safetensors at ``path`` atomically (temp file in the same folder, fsync, rename).

    safetensors stores each tensor's bytes once and refuses views and shared storage, so every tensor is
    copied into its own contiguous CPU buffer first (values, dtypes and shapes unchanged).
    """
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise TypeError("weights must map strings to tensors")
    plain = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in weights.items()}
    meta = {"format": FORMAT, "name": name}        # nothing else: the file's hash depends on the weights alone
    return ckpt.atomic_write(path, lambda tmp: safetensors.torch.save_file(plain, tmp, metadata=meta))


def _build(entry: dict[str, Any]) -> nn.Module:
    """The untrained module a manifest entry names: the one model builder, :func:`featlab.runs.build_model`."""
    return runs.build_model({**entry, "method": "denoiser" if entry["kind"] == "denoiser" else entry.get("method")})


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


def budget(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """A shipped model's training budget, read from its manifest fields: ``network``, ``epochs``, ``batch``,
    ``images`` ("all" or the subset's size), ``eps`` (None for standard training) and ``training attack`` ("PGD-5",
    "APGD-CE-40", "PGD-40 on its KL" for TRADES, whose attack raises its KL term; "none" for standard training)."""
    e = info(name, folder)
    obj = e.get("objective") or {}
    if e["method"] in ("standard", "denoiser") or "steps" not in obj:
        attack = "none" if e["method"] == "standard" else f"{e['method']} (its own pairs)"
    else:
        attack = f"{str(obj.get('attack', 'pgd')).upper()}-{obj['steps']}" + (" on its KL" if e["method"] == "trades" else "")
    return {"network": e["model"], "epochs": e["epochs"], "batch": e["batch_size"], "images": e["limit"] or "all",
            "eps": obj.get("eps"), "training attack": attack}


def defended(name: str, device: str | torch.device = "cpu", folder: str | os.PathLike | None = None) -> nn.Module:
    """A pretrained denoiser in front of the classifier it was trained for (``Defended``)."""
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
    config, state = runs.read(run)
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
        shape.update(arch=config.get("arch", "unet"), width=config["width"], depth=config["depth"],
                     channels=config["channels"])
    try:                    # the weights must build the model the config names, before anything is written
        _build(shape).load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"run_dir: the weights in {run / 'checkpoint.pt'} do not fit the model its config.json "
                         f"names ({config['model']}, {config['dataset']}): {str(e).splitlines()[0]}") from None
    out = _write(weights, folder / f"{name}.safetensors", name)
    history = state.get("history", [])
    entry: dict[str, Any] = {
        "file": out.name, "sha256": ckpt.sha256(out), "kind": kind, "run": runs.folder_of(run).name,
        "model": config["model"], "dataset": config["dataset"], "method": config["method"],
        **runs.train_summary(history), "batch_size": config.get("batch_size"), "limit": config.get("limit"),
        "train_command": config.get("command"), "train_device": config.get("device"),
        "objective": config.get("objective"),
        "history": history, "metrics": metrics or {}}
    if kind == "denoiser":
        entry.update(classifier=classifier, arch=shape["arch"], width=shape["width"], depth=shape["depth"],
                     channels=shape["channels"])
    man[name] = entry
    ckpt.atomic_write_text(folder / "manifest.json", json.dumps(man, indent=2, sort_keys=True) + "\n")
    return out


def load_classifier(ref: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A classifier from a reference, as ``featlab train --classifier-run`` takes it: ``pretrained:NAME``
    (a shipped classifier) or a run folder. Returns the module (eval mode) and its dataset, model and
    method."""
    if not isinstance(ref, str):
        raise TypeError(f"ref must be a string: pretrained:NAME or a run folder, got {type(ref).__name__}")
    if ref.startswith("pretrained:"):
        name = ref.split(":", 1)[1]
        entry = info(name)
        if entry["kind"] != "classifier":
            raise ValueError(f"ref: {ref} is a denoiser; a classifier is needed: "
                             f"{available('classifier')}")
        return load(name, device), {k: entry[k] for k in ("dataset", "model", "method")}
    run = runs.load(ref, device)
    if run.config["method"] == "denoiser":
        raise ValueError(f"ref: {ref} is a denoiser run; a classifier run or pretrained:NAME is needed")
    return run.model, run.config
