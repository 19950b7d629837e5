"""Accuracy, robust accuracy and result records (``results/<run>.json``)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ._utils import check_images, check_labels, check_number, get_device
from .attacks.base import model_device

RESULT_KEYS = ("dataset", "model", "method", "threat_model", "norm", "eps", "attack", "n_eval", "clean_acc",
               "robust_acc", "epochs", "seed", "command", "commit", "device", "wall_s", "date")


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, desc: str, progress: bool):
    check_number("batch_size", batch_size, low=1, integer=True)
    n = len(x)
    for i in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """Predicted labels (N,) for images x (N, C, H, W) in [0, 1]; model left in its mode."""
    check_images(x)
    device, was_training = model_device(model), model.training
    model.eval()
    try:
        preds = [model(xb.to(device)).argmax(1).cpu()
                 for xb, _ in _batches(x, torch.zeros(len(x)), batch_size, "predict", progress)]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             progress: bool = False) -> float:
    """Clean accuracy in percent."""
    check_labels(y, len(x), getattr(model, "num_classes", None))
    return 100.0 * (predict(model, x, batch_size, progress) == y.cpu()).float().mean().item()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    batch_size: int = 500, progress: bool = True) -> float:
    """Accuracy in percent on ``attack(x, y)``, attacking batch by batch.

    ``attack`` is any callable ``(x, y) -> x_adv``: a featlab attack or a torchattacks one.
    """
    check_images(x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    device, correct = model_device(model), 0
    name = getattr(attack, "name", type(attack).__name__)
    for xb, yb in _batches(x, y, batch_size, f"robust acc ({name})", progress):
        xb, yb = xb.to(device), yb.to(device)
        x_adv = attack(xb, yb)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == yb).sum().item()
        model.train(was_training)
    return 100.0 * correct / len(x)


# --------------------------------------------------------------------------- result records
def git_commit(short: bool = False) -> str:
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent.parent)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent.parent).stdout.strip()
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description(device: torch.device | str | None = None) -> str:
    dev = get_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_result(name: str, record: dict[str, Any] | list[dict[str, Any]],
                 results_dir: str | os.PathLike = "results") -> Path:
    """Write ``results/<name>.json``: one record (or a list), each completed with commit, date,
    command and versions where missing.

    Every key of ``RESULT_KEYS`` must be present in every record (accuracies in percent) or a
    ValueError names the missing ones.
    """
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchattacks
        versions["torchattacks"] = torchattacks.__version__
    except ImportError:
        pass
    defaults = {"commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "versions": versions}
    records = [record] if isinstance(record, dict) else list(record)
    out = []
    for rec in records:
        rec = {**defaults, **rec}
        missing = [k for k in RESULT_KEYS if k not in rec]
        if missing:
            raise ValueError(f"record is missing required key(s) {missing}; required: {list(RESULT_KEYS)}")
        out.append(rec)
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out[0] if isinstance(record, dict) else out, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def preprocessing_defense(preprocess: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps_list: list[float], steps: int = 40, step_size: float | None = None,
                          batch_size: int = 500, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy of ``classifier(preprocess(x))`` under the three threat models, per eps (Linf PGD).

    - "none": the undefended classifier under PGD (reference);
    - "oblivious": PGD against the bare classifier, then the defense (the attacker ignores it);
    - "end-to-end": PGD through preprocess + classifier (white box; the denoiser is differentiable);
    - "bpda": PGD with the preprocessing treated as identity on the backward pass.

    Returns rows {"threat_model", "eps", "robust_acc", "clean_acc"} (accuracies in percent);
    eps 0 rows give the clean accuracy of each model.
    """
    from .attacks import BPDA, PGD
    from .defenses.denoiser import Defended
    defended = Defended(preprocess, classifier)
    clean_def = accuracy(defended, x, y, batch_size)
    clean_cls = accuracy(classifier, x, y, batch_size)
    rows = []
    for eps in eps_list:
        check_number("eps", eps, low=0.0, high=1.0)
        a = step_size if step_size is not None else 2.5 * eps / steps
        pgd = lambda m: PGD(m, eps=eps, steps=steps, step_size=a)  # noqa: E731
        runs = {"none": (classifier, pgd(classifier), clean_cls),
                "oblivious": (defended, pgd(classifier), clean_def),
                "end-to-end": (defended, pgd(defended), clean_def),
                "bpda": (defended, BPDA(preprocess, classifier, eps=eps, steps=steps, step_size=a), clean_def)}
        for tm, (model, attack, clean) in runs.items():
            acc = robust_accuracy(model, x, y, attack, batch_size, progress)
            rows.append({"threat_model": tm, "eps": eps, "robust_acc": acc, "clean_acc": clean})
    return rows
