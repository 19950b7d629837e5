"""Borrowing a caller's module: its modes and flags given back as they were, its device, what DDP wraps."""
from __future__ import annotations

import contextlib
from typing import Any

import torch


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


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (else buffer); CPU for a module that holds neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
