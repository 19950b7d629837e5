"""APGD-CE as a *training* attack (torchattacks' APGD, Croce & Hein 2020), for objectives that
train against it: AFD (the AFD code's MNIST default, 40 iterations) and PGD-AT at the same budget.

torchattacks' APGD reseeds torch's global RNG on every call; here the RNG is forked around it, so
the data order, augmentation and every later random draw of a run are untouched. The model's
train/eval mode is restored afterwards.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._utils import check_number, eval_mode, unwrap


def apgd_ce_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """x_adv from APGD-CE (Linf, 1 restart, ``steps`` iterations), detached; global RNG and model mode kept."""
    import torchattacks
    check_number("eps", eps, low=0.0, high=1.0)
    check_number("steps", steps, low=1, integer=True)
    model = unwrap(model)
    atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", n_restarts=1)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), (autocast or contextlib.nullcontext()):
        x_adv = atk(x, y)
    return x_adv.detach()
