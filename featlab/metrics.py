"""Metrics: predictions, clean and robust accuracy, and the input-gradient statistics.

Everything here is measured in fp32 (any autocast around a call is switched off) and restores the
modes of the modules it was given. Under torchrun (:mod:`featlab.distributed`) the batches are
shared out and the results gathered, identically to one process.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, distributed
from ._utils import (check_labels, check_model_input, check_number, eval_mode, inputs_checked, model_device,
                     show_progress)
from .attacks import Attack, canonical_norm


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, desc: str, progress: bool):
    check_number("batch_size", batch_size, low=1, integer=True)
    n = len(x)
    for i in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress):
        yield x[i:i + batch_size], y[i:i + batch_size]


def fp32(device: torch.device | str):
    """A context that turns off any autocast around it: featlab measures accuracy in fp32, so that a
    robustness number does not depend on the precision a caller happens to train in."""
    return torch.autocast(torch.device(device).type, enabled=False)


def _batch_count(n: int, batch_size: int) -> int:
    check_number("batch_size", batch_size, low=1, integer=True)
    return (n + batch_size - 1) // batch_size


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """Predicted labels (N,) for images x (N, C, H, W) in [0, 1]; model left in its mode.

    Under torchrun (:mod:`featlab.distributed`) the batches are shared out and gathered: call it on
    every rank; each gets all N labels."""
    check_model_input(model, x)
    device = model_device(model)
    n_batches = _batch_count(len(x), batch_size)
    local = {}
    with eval_mode(model), fp32(device), inputs_checked():        # every submodule's mode restored after
        for b in tqdm(distributed.my_batches(n_batches), desc="predict", leave=False,
                      disable=not (show_progress(progress) and distributed.is_main())):
            local[b] = model(x[b * batch_size:(b + 1) * batch_size].to(device)).argmax(1).cpu()
    return torch.cat(distributed.gather_batches(local, n_batches)) if n_batches else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             progress: bool = False) -> float:
    """Clean accuracy in percent."""
    check_labels(y, len(x), getattr(model, "num_classes", None))
    return 100.0 * (predict(model, x, batch_size, progress) == y.cpu()).float().mean().item()


def check_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: Any = "linf",
                       name: str = "attack", tol: float = 1e-5) -> None:
    """Raise if ``x_adv`` leaves the threat model: other shape, outside [0, 1], NaN, or farther than
    ``eps`` from ``x`` in ``norm`` (Linf or L2; ``eps`` None checks only the box). A robust accuracy
    measured on such images would be wrong, so nothing is clipped here: the attack is at fault."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{name}: returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise RuntimeError(f"{name}: returned NaN or infinite pixels")
    if x_adv.min().item() < -tol or x_adv.max().item() > 1 + tol:
        raise RuntimeError(f"{name}: returned pixels outside [0, 1] "
                           f"(min {x_adv.min().item():.6f}, max {x_adv.max().item():.6f})")
    n = canonical_norm(norm)
    if eps is None or n is None:
        return
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if n == "linf" else d.norm(dim=1)
    if len(dist) and dist.max().item() > eps + tol:
        raise RuntimeError(f"{name}: a perturbation of {n} size {dist.max().item():.6f} exceeds eps {eps:g}; "
                           f"its robust accuracy would count images outside the threat model")


def _same_forward(attack_model: nn.Module, model: nn.Module) -> bool:
    """Whether the attack's model computes the same outputs as the evaluated model (then the
    attack's own "fooled" is the evaluation's, and it may stop early)."""
    if attack_model is model:
        return True
    same = getattr(attack_model, "same_forward_as", None)
    return bool(same(model)) if callable(same) else False


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    batch_size: int = 500, progress: bool | None = None, early_exit: bool = True, seed: int = 0,
                    resume: BatchStore | None = None) -> float:
    """Accuracy in percent on ``attack(x, y)``: the mean of :func:`robust_correct`."""
    ok = robust_correct(model, x, y, attack, batch_size, progress, early_exit, seed, resume=resume)
    return 100.0 * ok.float().mean().item()


def _hash_tensor(h, t: torch.Tensor, prefix: str = "") -> None:
    """Feed ``prefix``, the dtype, the shape and the raw bytes of ``t`` into the hash ``h``."""
    t = t.detach().cpu().contiguous()
    h.update(f"{prefix}{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def state_fingerprint(model: nn.Module) -> str:
    """sha256 of what a model computes with: its class and ``repr`` (the settings kept outside the
    weights: a control's ``bits``, a filter's size) and its parameters and buffers (names, dtypes,
    shapes, values)."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|".encode())
    for name, t in sorted(model.state_dict().items()):
        _hash_tensor(h, t, f"{name}|")
    return h.hexdigest()


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the images and labels: which images ran."""
    h = hashlib.sha256()
    for t in (x, y):
        _hash_tensor(h, t)
    return h.hexdigest()


class BatchStore:
    """The finished batches of one :func:`robust_correct` computation on disk, so that an interrupted
    evaluation (a killed AutoAttack on 1,000 images) resumes at the first batch it had not finished.

    Each batch is written atomically (:func:`featlab.checkpoint.save`; loaded with weights only) to
    ``directory/batchNNNNN.pt`` with ``key``: what was computed (attack, eps, norm, seed, batch size,
    the images' and the weights' fingerprints). A batch file whose key differs is refused with a
    ``ValueError``: a result is never reused for another model, attack or image set. Batches are seeded
    by their index (:func:`featlab.distributed.batch_seed`), so a resumed result is the result an
    uninterrupted call gives.
    """

    def __init__(self, directory: str | os.PathLike, key: dict[str, Any]):
        self.directory = Path(directory)
        self.key = json.dumps(key, sort_keys=True, default=str)
        self.reused = 0              # batches read back in this call (on this rank)
        self.reused_wall_s = 0.0     # what they cost when they ran
        # every batch already there is checked now, on every rank, before any attack runs: a folder of
        # another evaluation is refused at once and by all ranks together, not by one rank halfway through
        self._done: dict[int, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("batch*.pt")) if self.directory.is_dir() else ():
            state = checkpoint.load(path)
            if state.get("key") != self.key:
                raise ValueError(f"resume_dir: {path} holds another evaluation (other weights, images, attack, "
                                 f"settings or code); delete {self.directory} (rm -r) or resume into another folder")
            self._done[int(path.stem[len("batch"):])] = state

    def _path(self, b: int) -> Path:
        return self.directory / f"batch{b:05d}.pt"

    def get(self, b: int) -> torch.Tensor | None:
        state = self._done.get(b)
        if state is None:
            return None
        self.reused += 1
        self.reused_wall_s += float(state["wall_s"])
        return state["correct"]

    def put(self, b: int, correct: torch.Tensor, wall_s: float) -> None:
        checkpoint.save({"key": self.key, "correct": correct.cpu(), "wall_s": float(wall_s)}, self._path(b))


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   batch_size: int = 500, progress: bool | None = None, early_exit: bool = True,
                   seed: int = 0, resume: BatchStore | None = None) -> torch.Tensor:
    """Per example (N,) bool: correct both clean and on ``attack(x, y)``, attacking batch by batch in
    fp32 (any autocast around the call is switched off: see :func:`fp32`).

    An example counts as robust when the model classifies it correctly both clean and after the
    attack (as AutoAttack counts). ``attack`` is any callable ``(x, y) -> x_adv``: a featlab attack or
    a torchattacks one. A featlab attack on this very model that supports it (PGD, BPDA) runs through
    :meth:`~featlab.attacks.Attack.run_for_accuracy`: examples misclassified clean are not attacked,
    each example keeps its first fooling iterate, and with ``early_exit`` (default) an example stops
    costing gradients once fooled; ``early_exit=False`` computes every step for every example and
    gives the same number (tests/test_speed.py). Every result is checked against the attack's own
    ``eps`` and ``norm`` (when it has them) and the [0, 1] box (:func:`check_threat_model`), so a
    third-party attack cannot inflate the success rate.

    Batch ``b`` runs with torch's RNG seeded by ``distributed.batch_seed(seed, b)`` (the caller's RNG
    is restored afterwards), so random starts do not depend on what ran before. Under torchrun the
    batches are dealt round-robin to the ranks and the result gathered: the same tensor, exactly,
    as one process computes (tests/test_distributed.py). Call it on every rank.

    ``resume``: a :class:`BatchStore`; batches it holds are read back, every batch computed is written
    to it as soon as it finishes (each rank writes its own).
    """
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    check_number("seed", seed, low=0, integer=True)
    if resume is not None and not isinstance(resume, BatchStore):
        raise TypeError(f"resume: a featlab.metrics.BatchStore or None, not {type(resume).__name__} "
                        f"(sweep, audit and preprocessing_defense take a folder as resume_dir)")
    device = model_device(model)
    name = getattr(attack, "name", type(attack).__name__)
    tracked = (isinstance(attack, Attack) and attack.supports_early_exit
               and _same_forward(attack.model, model))
    n_batches = _batch_count(len(x), batch_size)
    local: dict[int, torch.Tensor] = {}
    for b in tqdm(distributed.my_batches(n_batches), desc=f"robust acc ({name})", leave=False,
                  disable=not (show_progress(progress) and distributed.is_main())):
        if resume is not None and (done := resume.get(b)) is not None:
            local[b] = done
            continue
        t0 = time.perf_counter()
        xb = x[b * batch_size:(b + 1) * batch_size].to(device)
        yb = y[b * batch_size:(b + 1) * batch_size].to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), fp32(device), \
                inputs_checked():
            torch.manual_seed(distributed.batch_seed(seed, b))
            with eval_mode(model), torch.no_grad():
                clean_ok = model(xb).argmax(1) == yb
            if tracked:
                x_adv = attack.run_for_accuracy(xb, yb, active=clean_ok, early_exit=early_exit)
            else:
                x_adv = attack(xb, yb)
            eps = getattr(attack, "eps", None)
            check_threat_model(xb, x_adv, float(eps) if isinstance(eps, (int, float)) else None,
                               getattr(attack, "norm", None), name)
            with eval_mode(model), torch.no_grad():
                local[b] = (clean_ok & (model(x_adv).argmax(1) == yb)).cpu()
        if resume is not None:
            resume.put(b, local[b], time.perf_counter() - t0)
    parts = distributed.gather_batches(local, n_batches)
    if resume is not None and distributed.is_distributed():     # every rank's read-back batches, not rank 0's
        counts = distributed.all_reduce_sum(torch.tensor([float(resume.reused), resume.reused_wall_s],
                                                         dtype=torch.float64, device=device))
        resume.reused, resume.reused_wall_s = int(counts[0].item()), float(counts[1].item())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)



def input_gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Share of examples whose cross-entropy input gradient is all zero or not finite, and the median norm."""
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    device = model_device(model)
    dead, norms = 0, []
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, "input gradients", False):
            xb = xb.to(device).clone().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xb), yb.to(device), reduction="sum")
            g = torch.autograd.grad(loss, xb, allow_unused=True)[0] if loss.requires_grad else None
            g = (torch.zeros_like(xb) if g is None else g).flatten(1)
            bad = ~torch.isfinite(g).all(1) | (g.abs().amax(1) == 0)
            dead += int(bad.sum())
            norms.append(torch.nan_to_num(g.norm(dim=1), nan=0.0).cpu())
    return {"dead_fraction": 100.0 * dead / len(x), "median_grad_norm": float(torch.cat(norms).median())}


