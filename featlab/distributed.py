"""featlab under ``torchrun``: torch.distributed, one process per device, nothing home-made.

    torchrun --nproc_per_node 2 -m featlab.cli train ...      # or: torchrun ... $(which featlab) train ...
    torchrun --nproc_per_node 2 -m featlab.cli eval ...

- :func:`init` joins the process group that torchrun describes in the environment (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): **gloo** on CPU, **nccl** on CUDA (each process
  takes the GPU ``LOCAL_RANK``). Without torchrun nothing changes; under torchrun with one process the
  distributed paths run all the same (DDP, the gathers), which is how nccl is checked on one GPU.
- Training (:class:`featlab.train.Trainer`): every rank draws the same global permutation from the
  run seed and takes its slice of each global batch; DDP averages the gradients (objectives that
  run their own updates, AFD, all-reduce theirs with :func:`average_gradients`). Rank 0 alone
  writes checkpoints, history and records.
- Evaluation (:mod:`featlab.metrics`): batches are dealt round-robin to the ranks, each batch with
  its own seed (:func:`batch_seed`), and the per-example correctness is gathered, so the number is
  the single-process one exactly (same batches, same seeds), for every attack.

Collectives time out after ``timeout_s`` (default 600 s, ``FEATLAB_DIST_TIMEOUT``): a rank that dies
ends the job (torchrun stops the others) and one that hangs cannot hold the others forever.
"""
from __future__ import annotations

import datetime
import gc
import os
from typing import Iterable

import torch
import torch.distributed as dist

from ._utils import get_device


def env_world_size() -> int:
    """The world size torchrun announces (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE: {os.environ['WORLD_SIZE']!r} is not an integer (torchrun sets it)") from None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets RANK, LOCAL_RANK and WORLD_SIZE) started this process."""
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def is_distributed() -> bool:
    """True inside an initialised process group (under torchrun, even with one process: then the DDP and
    gather paths run too, e.g. nccl on one GPU)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints results."""
    return rank() == 0


def init(device: str | torch.device | None = "auto", timeout_s: float | None = None) -> torch.device:
    """Join torchrun's process group if there is one; return this process's device.

    ``device``: "auto" (cuda > mps > cpu), "cpu" or "cuda". Under torchrun on CUDA each process
    takes ``cuda:LOCAL_RANK`` and the backend is nccl; on CPU it is gloo.
    """
    dev = get_device(device)
    if not launched_by_torchrun():
        if env_world_size() > 1:
            raise RuntimeError("WORLD_SIZE > 1 but RANK/LOCAL_RANK are not set: start featlab with torchrun")
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"device: torchrun runs on 'cpu' (gloo) or 'cuda' (nccl), not {dev.type!r}")
    if not dist.is_initialized():
        timeout = float(timeout_s if timeout_s is not None else os.environ.get("FEATLAB_DIST_TIMEOUT", 600))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout),
                                device_id=dev if dev.type == "cuda" else None)
    return dev


def shutdown(*, clean: bool) -> None:
    """Leave the process group (a no-op outside torchrun).

    ``clean=True`` (the work finished on this rank): wait for the other ranks first, and free what
    still holds the group (a DDP wrapper in a reference cycle) while the interpreter is alive, so
    no rank tears gloo down under a peer that is still talking to it, and no gloo worker thread is
    destroyed during interpreter shutdown (both end a rank with SIGABRT, "terminate called without
    an active exception"). ``clean=False`` (this rank failed): destroy at once; a barrier would
    wait for ranks that may never come.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean and dist.get_world_size() > 1:
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch ``index``: the same whichever rank runs it."""
    return (int(seed) * 1_000_003 + int(index)) % (2 ** 63 - 1)


def my_batches(n_batches: int) -> range:
    """The evaluation batches this rank runs: round-robin over ranks."""
    return range(rank(), n_batches, world_size())


def gather_batches(local: dict[int, torch.Tensor], n_batches: int) -> list[torch.Tensor]:
    """Every batch's per-example tensor (CPU), in batch order, from the ranks that computed them."""
    if not is_distributed():
        return [local[i] for i in range(n_batches)]
    parts: list[dict[int, torch.Tensor] | None] = [None] * world_size()
    dist.all_gather_object(parts, {i: t.cpu() for i, t in local.items()})
    merged = {i: t for part in parts for i, t in (part or {}).items()}
    missing = [i for i in range(n_batches) if i not in merged]
    if missing:
        raise RuntimeError(f"distributed evaluation: batches {missing[:5]} came back from no rank")
    return [merged[i] for i in range(n_batches)]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: Iterable[torch.nn.Parameter], weight: float = 1.0) -> None:
    """All-reduce the gradients of ``params``: each rank's gradient times ``weight`` (its share of the
    global batch), summed, in one flat buffer. For objectives that step their own optimisers (AFD);
    every rank must hold gradients for the same parameters (the same graph on every rank)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads]) * weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (as DDP does at construction)."""
    if is_distributed():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
