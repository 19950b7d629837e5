"""Checkpoints: atomic writes and loading that cannot execute code.

``save`` writes to a temporary file in the same folder, fsyncs it, then renames it over the
target, so a crash never leaves a half-written checkpoint under the real name. ``load`` uses
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts load; a pickle
that would build arbitrary objects (or run code) is refused with :class:`CheckpointError`,
and so is a truncated or corrupted file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint could not be loaded safely (missing, truncated, tampered or not featlab's)."""


def save(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename). Returns the path."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` (or any weights-only ``torch.save`` file).

    Raises:
        CheckpointError: the file is missing, truncated/corrupted, or holds objects other than
            tensors and plain containers (a pickle that could execute code is never run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"path: no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if not any(w in msg for w in ("GLOBAL", "global", "Unsupported class", "not an allowed")):
            raise CheckpointError(f"path: {path} is truncated or corrupted and cannot be read "
                                  f"({msg.splitlines()[0] if msg else 'UnpicklingError'})") from None
        raise CheckpointError(
            f"path: {path} was refused: it holds objects other than tensors and plain containers, "
            f"which could execute code when loaded (weights-only loading). Only load checkpoints you "
            f"trust, re-saved as plain state dicts. Detail: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"path: {path} is truncated or corrupted and cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"path: {path} does not hold a dict of tensors (got {type(state).__name__})")
    return state


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike,
                       expected_sha256: str | None = None) -> torch.nn.Module:
    """Load weights into ``model`` from a checkpoint (its ``"model"`` entry or a bare state dict)."""
    if expected_sha256 is not None:
        got = sha256(path)
        if got != expected_sha256:
            raise CheckpointError(f"path: {path} has sha256 {got}, expected {expected_sha256}: the file was "
                                  f"modified or damaged (a failed download saves an HTML page, for instance)")
    state = load(path)
    weights = state.get("model", state)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"path: {path} does not fit this model: {str(e).splitlines()[0]}") from None
    return model
