"""Checkpoints: atomic, tamper-evident writes and loading that cannot execute code.

``save`` serialises the state, stores it with the sha256 of its bytes, writes that to a temporary
file in the same folder, fsyncs it, then renames it over the target, so a crash never leaves a
half-written checkpoint under the real name. Temporary files a killed process left behind are swept
by the next save of the same checkpoint; the file gets the process's umask (as ``open`` would).
``load`` uses ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts load; a
pickle that would build arbitrary objects (or run code) is refused with :class:`CheckpointError`,
and so is a truncated or corrupted file, or one whose content no longer matches its checksum (a
flipped bit). Files written before checksums existed (no ``format`` key) still load.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


class CheckpointError(ValueError):
    """A checkpoint could not be loaded safely (missing, truncated, tampered or not featlab's)."""


FORMAT = "featlab-checkpoint-1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sweep_stale_tmp(path: Path) -> None:
    """Remove temporary files of earlier saves of ``path`` that never reached the rename (a SIGKILL)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def _looks_wrapped(state: dict) -> bool:
    """A checksummed file's outer dict, intact or with a damaged key (legacy files hold neither)."""
    if set(state) & {"format", "sha256", "payload"}:
        return True
    return len(state) == 3 and any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1
                                   for v in state.values())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder, which is
    fsynced, given the process's umask and renamed over ``path``; a crash never leaves a half-written
    file under the real name, and temporary files an earlier killed save left behind are swept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path



def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8): results records, RESULTS.md, the shipped-model manifest."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

def save(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`atomic_write`), with the sha256 of its serialised
    bytes. Returns the path."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapped = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    return atomic_write(path, lambda tmp: torch.save(wrapped, tmp))


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
    except Exception as e:       # whatever a damaged zip or pickle stream raises (IndexError, KeyError, ...)
        raise CheckpointError(f"path: {path} is truncated or corrupted and cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"path: {path} does not hold a dict of tensors (got {type(state).__name__})")
    if _looks_wrapped(state):
        if set(state) != {"format", "sha256", "payload"} or state["format"] != FORMAT:
            raise CheckpointError(f"path: {path} has a damaged or unknown header (keys {sorted(state)}, format "
                                  f"{state.get('format')!r}; expected {FORMAT!r})")
        payload = state.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            raise CheckpointError(f"path: {path} is a featlab checkpoint without its payload")
        data = payload.cpu().numpy().tobytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != state.get("sha256"):
            raise CheckpointError(f"path: {path} does not match its checksum (sha256 {digest[:12]}..., saved "
                                  f"{str(state.get('sha256'))[:12]}...): the file was modified or damaged after it "
                                  f"was written")
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:      # the checksum matched, so this is not damage but an unloadable payload
            raise CheckpointError(f"path: {path} holds a payload that cannot be loaded safely "
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
