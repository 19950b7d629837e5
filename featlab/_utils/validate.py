"""featlab's one set of argument checks: each raises an error that names the argument and what it allows."""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterable

import torch

from .modules import unwrap


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number in the range."""
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        op = ">" if low_open else ">="
        rng = f"{op} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    if high is not None and value > high:
        rng = (f">= {low} and " if low is not None else "") + f"<= {high}"
        raise ValueError(f"{name} must be {rng}, got {value!r}")


def check_images(x: Any, *, name: str = "x", channels: int | None = None,
                 size: tuple[int, int] | None = None) -> None:
    """Check a batch of images: a float tensor N,C,H,W with N > 0, finite, in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one image")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with pixels in [0, 1], got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) for this model, got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"{name} must be {size[0]}x{size[1]} pixels for this model, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; pixels must be finite and in [0, 1]")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must have pixels in [0, 1] (featlab models normalise inside), "
                         f"got values in [{lo:.4g}, {hi:.4g}]")


_SCOPE = threading.local()


@contextlib.contextmanager
def inputs_checked():
    """Inside this block the models skip the value checks of their input (finite, in [0, 1]), keeping
    the free shape checks: featlab's entry points check a batch once, then run many forward passes on
    it and on images they made from it (attack steps, training steps) without a device sync each."""
    _SCOPE.depth = getattr(_SCOPE, "depth", 0) + 1
    try:
        yield
    finally:
        _SCOPE.depth -= 1


def inside_checked_scope() -> bool:
    return getattr(_SCOPE, "depth", 0) > 0


def check_model_input(model: Any, x: Any, name: str = "x") -> None:
    """:func:`check_images` with the model's own shape when it declares one (featlab models and
    ``Defended`` have ``check_input``; DDP wrappers are looked through): the one input check of every
    public entry point that takes images for a model."""
    check = getattr(unwrap(model), "check_input", None)
    if callable(check):
        check(x, name=name)
    else:
        check_images(x, name=name)


def check_labels(y: Any, n: int, num_classes: int | None, *, name: str = "y") -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got shape {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {y.dtype}")
    if num_classes is not None and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must hold class indices in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
