"""Small helpers shared by every module: seeding, device choice, argument checks."""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

#: featlab's version (also ``featlab.__version__``; pyproject.toml carries the same string)
VERSION = "0.1.0"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a CPU run repeats exactly.

    Args:
        seed: a non-negative integer (default 0).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: ``device`` if given, else cuda > mps > cpu, whichever exists.

    The environment variable ``FEATLAB_DEVICE`` overrides the automatic choice.
    """
    device = device if device not in (None, "auto") else os.environ.get("FEATLAB_DEVICE") or None
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16``).

    Without native support, bf16 autocast on a CPU is emulated and slower than fp32, so featlab
    keeps fp32 there. ``FEATLAB_CPU_BF16=1`` / ``0`` overrides the detection (tests simulate a
    CPU without bf16 this way). Read from ``/proc/cpuinfo`` on Linux; other systems report False.
    """
    forced = os.environ.get("FEATLAB_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if forced is not None:
        raise ValueError(f"FEATLAB_CPU_BF16 must be '0' or '1' (or unset), got {forced!r}")
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class FastPath:
    """How a training step computes: autocast dtype (None: plain fp32) and memory format.

    Built by :func:`choose_fast_path`; ``precision`` and ``memory_format`` are the names run records store.
    """

    device_type: str
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def precision(self) -> str:
        return "fp32" if self.amp_dtype is None else "bf16-autocast"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self):
        """The autocast context of this path (a no-op context for fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module``'s 4-d parameters to this path's memory format (in place; values unchanged)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def describe(self) -> dict[str, str]:
        return {"precision": self.precision, "memory_format": self.memory_format}


def choose_fast_path(device: torch.device | str, precision: str = "auto",
                     memory_format: str = "auto") -> FastPath:
    """The fastest correct way to train on ``device``, unless told otherwise.

    ``precision="auto"``: bf16 autocast on CUDA (when the GPU supports bf16) and on CPUs with native
    bf16 (:func:`cpu_has_native_bf16`); fp32 elsewhere (MPS, older CPUs). ``memory_format="auto"``:
    channels_last on CUDA, and on a CPU together with bf16 (oneDNN's fast bf16 convolutions are
    channels_last; in fp32 on a CPU it is slower for ResNet-18, see bench/train_speed.py).
    ``FEATLAB_FAST=0`` in the environment turns both "auto" choices into fp32 + contiguous.

    Evaluation never uses this: robust accuracy is measured in fp32 (see ``featlab.metrics``).
    """
    check_choice("precision", precision, PRECISIONS)
    check_choice("memory_format", memory_format, MEMORY_FORMATS)
    dev = torch.device(device)
    fast = os.environ.get("FEATLAB_FAST", "1") != "0"
    if precision == "auto":
        if not fast:
            precision = "fp32"
        elif dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        elif dev.type == "cpu":
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
        else:
            precision = "fp32"
    if precision == "bf16" and dev.type not in ("cpu", "cuda"):
        raise ValueError(f"precision='bf16' needs a CPU or CUDA device, got {dev.type!r}; use 'fp32' or 'auto'")
    if memory_format == "auto":
        memory_format = "channels_last" if fast and (dev.type == "cuda" or
                                                     (dev.type == "cpu" and precision == "bf16")) else "contiguous"
    return FastPath(dev.type, torch.bfloat16 if precision == "bf16" else None, memory_format == "channels_last")


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


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """The module in eval mode inside the block; afterwards every submodule has its own mode back
    (``module.train(was)`` would give all of them the top module's)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def borrowed(module: torch.nn.Module):
    """Use a caller's module frozen and in eval mode inside the block, then give it back exactly as it
    was (each parameter's ``requires_grad``, the mode of every submodule). Gradients still flow through
    it to its input; none reach its parameters."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    with eval_mode(module):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield module
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def unwrap(model: Any) -> Any:
    """The module inside a DistributedDataParallel wrapper (attacks never all-reduce their gradients)."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


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


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (else buffer); CPU for a module that holds neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def git_commit(short: bool = False, cwd: str | Path | None = None) -> str:
    """The commit of the featlab checkout (or of ``cwd``), "+dirty" if tracked files changed; "unknown" if none."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, cwd=cwd)
        commit = out.stdout.strip() if out.returncode == 0 else ""   # no repository, or no commit yet
        commit = commit or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd).stdout.strip()
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def running_unattended() -> bool:
    """True under papermill/CI (``featlab.runner`` sets FEATLAB_NOTEBOOK_RUN=1)."""
    return os.environ.get("FEATLAB_NOTEBOOK_RUN") == "1"


def show_progress(progress: bool | None) -> bool:
    """Whether a loop shows its progress bar: ``progress`` if given, else everywhere but an unattended
    notebook run, where the saved notebook would keep a bar's frames as its output."""
    return (not running_unattended()) if progress is None else bool(progress)
