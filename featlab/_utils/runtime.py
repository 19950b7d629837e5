"""Where and how featlab computes: seeding, the device, and the training fast path (bf16, channels_last)."""
from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass

import numpy as np
import torch

from .validate import check_choice


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
