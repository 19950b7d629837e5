"""The training loop shared by every objective (:class:`Trainer`), and the notebooks' one-liner
:func:`train_classifier`."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from .. import distributed
from .._utils import (FastPath, check_choice, check_labels, check_model_input, check_number, choose_fast_path, get_device,
                      inputs_checked, show_progress)
from ..attacks import PGD
from ..metrics import accuracy, robust_accuracy
from .objectives import Objective, Standard, create_objective


class Triangle:
    """The LR factor of a one-cycle ("triangle") schedule, per optimiser step: linear from ``start`` to
    1 over ``warmup_steps``, then linear to 0 at ``total_steps`` (Smith 2018; the schedule of the fast
    CIFAR recipes, e.g. airbench). A class, not a lambda, so checkpoints can hold and restore it."""

    def __init__(self, total_steps: int, warmup_steps: int, start: float = 0.0):
        check_number("total_steps", total_steps, low=1, integer=True)
        check_number("warmup_steps", warmup_steps, low=0, high=total_steps, integer=True)
        check_number("start", start, low=0.0, high=1.0)
        self.total_steps, self.warmup_steps, self.start = int(total_steps), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1.0 - self.start) * step / self.warmup_steps
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


def triangle_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                      start: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step one-cycle LR schedule (see :class:`Triangle`); give it to ``Trainer`` with
    ``scheduler_interval="step"``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Triangle(total_steps, warmup_steps, start))


def triangle_schedule_for(optimizer: torch.optim.Optimizer, epochs: int, n_train: int, batch_size: int,
                          warmup_epochs: float | None = None) -> tuple[torch.optim.lr_scheduler.LambdaLR, float]:
    """:func:`triangle_schedule` for ``epochs`` over ``n_train`` images in batches of ``batch_size``, the
    warm-up ``warmup_epochs`` long (default a fifth of ``epochs``); returns (scheduler, warm-up epochs)."""
    steps = math.ceil(n_train / batch_size)
    warmup = epochs / 5 if warmup_epochs is None else warmup_epochs
    return triangle_schedule(optimizer, epochs * steps, round(warmup * steps)), warmup


def _clone_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """A scheduler of the same class and settings as ``scheduler``, bound to ``optimizer``."""
    import copy
    import inspect
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and len(scheduler.lr_lambdas) == 1:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, copy.deepcopy(scheduler.lr_lambdas[0]))
    sig = inspect.signature(type(scheduler).__init__)
    kwargs = {}
    for name in list(sig.parameters)[2:]:           # skip self, optimizer
        if name in ("last_epoch", "verbose") or not hasattr(scheduler, name):
            continue
        value = getattr(scheduler, name)
        kwargs[name] = sorted(value.elements()) if name == "milestones" else copy.deepcopy(value)
    try:
        return type(scheduler)(optimizer, **kwargs)
    except TypeError as e:
        raise TypeError(f"scheduler: cannot build a {type(scheduler).__name__} for the objective's own optimisers "
                        f"({e}); use StepLR, MultiStepLR, CosineAnnealingLR or ExponentialLR") from e


class Trainer:
    """The training loop shared by every objective.

    Args:
        model: a featlab model (or any classifier on [0, 1] images).
        objective: an :class:`Objective` (default :class:`Standard`).
        epochs: total epochs (default 1).
        batch_size: default 128.
        optimizer: a torch optimiser over the model's parameters (default Adam, lr 1e-3).
        scheduler: a torch LR scheduler (optional), stepped after each epoch, or after each optimiser
            step with ``scheduler_interval="step"`` (e.g. :func:`triangle_schedule`).
        scheduler_interval: "epoch" (default) or "step".
        augment: callable applied to each training batch on the device (e.g.
            :func:`featlab.data.cifar_augment`), or None.
        device: "auto" (cuda > mps > cpu), or a device.
        precision: "auto" (default: bf16 autocast on CUDA and on CPUs with native bf16, fp32
            elsewhere), "fp32" (the fast path off) or "bf16".
        memory_format: "auto" (default: channels_last with bf16 and on CUDA), "contiguous" or
            "channels_last". ``FEATLAB_FAST=0`` makes both "auto"s plain fp32 + contiguous.
            ``trainer.fast.describe()`` says what was picked; the CLI stores it in the run's config.
        checkpoint: path written atomically after every epoch; with ``resume=True`` an
            existing file there is loaded and training continues after its last epoch.
        seed: fixes the data order of every epoch (default 0).
        eval_attack: ``model -> attack`` used for the per-epoch robust accuracy (optional).
        progress: show tqdm bars (default: everywhere but an unattended notebook run, ``_utils.show_progress``).
        log_every: the logs are read (one device sync) every this many steps (default 25); with a
            ``callback`` they are read every step.
        sync_batchnorm: under torchrun on CUDA, BatchNorm statistics over the global batch
            (``torch.nn.SyncBatchNorm``; default False: per-rank statistics, as DDP does by default).

    Under torchrun (:mod:`featlab.distributed`, after ``distributed.init()``) ``batch_size`` is the
    global batch: every rank draws the same permutation from ``seed`` and trains on its slice of each
    batch; DDP averages the gradients (objectives with ``own_gradients``, AFD, all-reduce their own).
    Each rank's RNG is reseeded at every epoch from (seed, epoch, rank), so attacks' random starts
    differ between ranks and a resumed run continues exactly. Rank 0 alone writes the checkpoint;
    every rank resumes from it. The epoch's logs are averaged over all ranks.
    """

    def __init__(self, model: nn.Module, objective: Objective | None = None, *, epochs: int = 1,
                 batch_size: int = 128, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, scheduler_interval: str = "epoch", augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: str | torch.device | None = "auto", precision: str = "auto",
                 memory_format: str = "auto", checkpoint: str | None = None, resume: bool = True, seed: int = 0,
                 eval_attack: Callable[[nn.Module], Callable] | None = None, progress: bool | None = None,
                 log_every: int = 25, sync_batchnorm: bool = False):
        check_number("epochs", epochs, low=1, integer=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        check_number("seed", seed, low=0, integer=True)
        check_number("log_every", log_every, low=1, integer=True)
        check_choice("scheduler_interval", scheduler_interval, ("epoch", "step"))
        self.device = get_device(device)
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        self.shard_weight = 1.0               # this rank's share of the current global batch
        if sync_batchnorm:
            if not distributed.is_distributed() or self.device.type != "cuda":
                raise ValueError("sync_batchnorm: needs torchrun on CUDA (torch's SyncBatchNorm runs on GPUs); "
                                 f"here: {'torchrun' if distributed.is_distributed() else 'no torchrun'}, "
                                 f"device {self.device.type}")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.fast: FastPath = choose_fast_path(self.device, precision, memory_format)
        self.model = self.fast.prepare(model.to(self.device))
        self.log_every = int(log_every)
        self.objective = objective or Standard()
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.scheduler, self.augment = scheduler, augment
        self.scheduler_interval = scheduler_interval
        self.checkpoint, self.resume, self.progress = checkpoint, resume, progress
        self.eval_attack = eval_attack
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.ddp = None
        if distributed.is_distributed() and not self.objective.own_gradients:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                               else None)
        elif distributed.is_distributed():
            distributed.broadcast_module(self.model)
        self.objective.bind(self)
        for name, opt in self.objective.optimizers().items():
            if opt is self.optimizer:
                raise ValueError(f"objective: its optimizer {name!r} is the trainer's optimizer; list only the others")
        self.extra_schedulers = self._schedulers_for_objective()

    @property
    def forward_model(self) -> nn.Module:
        """The module a training forward pass goes through: the DDP wrapper under torchrun, else the model.
        Attacks unwrap it (their gradients are per rank and never all-reduced)."""
        return self.ddp if self.ddp is not None else self.model

    def autocast(self):
        """The autocast context of the fast path (a no-op in fp32); objectives wrap forward passes in it."""
        return self.fast.autocast()

    def _schedulers_for_objective(self) -> dict[str, Any]:
        """A copy of the trainer's LR schedule for each optimiser the objective owns (as the AFD code
        schedules all three): same class and settings, bound to that optimiser."""
        if self.scheduler is None:
            return {}
        out = {}
        for name, opt in self.objective.optimizers().items():
            out[name] = _clone_scheduler(self.scheduler, opt)
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "objective": self.objective.state_dict(), "objective_config": self.objective.config(),
                 "epoch": epoch, "history": self.history, "rng": torch.get_rng_state(),
                 "seed": self.seed, "epochs": self.epochs}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        state["objective_optimizers"] = {k: o.state_dict() for k, o in self.objective.optimizers().items()}
        state["objective_schedulers"] = {k: sch.state_dict() for k, sch in self.extra_schedulers.items()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"objective_config": self.objective.config(), "seed": self.seed, "epochs": self.epochs}
        theirs = {k: state.get(k) for k in mine}
        if mine != theirs:
            diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
            raise ckpt.CheckpointError(f"checkpoint: {self.checkpoint} belongs to another run (saved vs now: {diff}); "
                                       f"use another checkpoint path or resume=False")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state.get("objective", {}))
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        saved = {**state.get("objective", {}), **state.get("objective_optimizers", {})}   # older runs: in "objective"
        for k, opt in self.objective.optimizers().items():
            if k not in saved:
                raise ckpt.CheckpointError(f"checkpoint: {self.checkpoint} has no state for the objective's optimizer "
                                           f"{k!r}; it was written by another objective")
            opt.load_state_dict(saved[k])
        for k, sch in self.extra_schedulers.items():
            if k in state.get("objective_schedulers", {}):
                sch.load_state_dict(state["objective_schedulers"][k])
        self.history = list(state.get("history", []))
        torch.set_rng_state(state["rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.start_epoch = int(state["epoch"]) + 1

    def _step_schedulers(self) -> None:
        self.scheduler.step()
        for sch in self.extra_schedulers.values():
            sch.step()

    def _maybe_resume(self) -> None:
        from pathlib import Path
        distributed.barrier()            # rank 0 may still be writing it
        if self.checkpoint and self.resume and Path(self.checkpoint).is_file():
            self.load_state_dict(ckpt.load(self.checkpoint, map_location=self.device))

    def prepare_batch(self, xb: torch.Tensor) -> torch.Tensor:
        """A training batch already on the device: augmented, then in the fast path's memory format."""
        if self.augment is not None:
            xb = self.augment(xb)
        if self.fast.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor,
            eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
            stop_after: int | None = None,
            callback: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train on tensors x (N, C, H, W) in [0, 1], y (N,); return the per-epoch history.

        ``eval_data`` (x, y) gives clean (and, with ``eval_attack``, robust) accuracy per epoch.
        ``stop_after`` ends this call after that many epochs (to simulate an interruption).
        ``callback(step, logs)`` is called after every batch with the logs as floats (live plots,
        e.g. ``viz.LiveLoss``); it costs one device sync per step.
        """
        check_model_input(self.model, x, name="x")
        check_labels(y, len(x), getattr(self.model, "num_classes", None))
        if eval_data is not None:
            check_model_input(self.model, eval_data[0], name="eval_data[0]")
            check_labels(eval_data[1], len(eval_data[0]), getattr(self.model, "num_classes", None), name="eval_data[1]")
        n = len(x)
        steps = math.ceil(n / self.batch_size)
        world, rank, main = self.world_size, self.rank, self.rank == 0
        last = n - (steps - 1) * self.batch_size
        if world > 1 and min(self.batch_size, last) < world:
            raise ValueError(f"batch_size: every one of the {world} ranks needs at least one image of each global "
                             f"batch; {n} images in batches of {self.batch_size} leave a last batch of {last}. "
                             f"Choose a batch_size that leaves a last batch of at least {world}")
        self._maybe_resume()
        show = show_progress(self.progress) and main
        done = 0
        with inputs_checked():                 # x was checked above: no value check per training forward
            for epoch in range(self.start_epoch, self.epochs):
                if stop_after is not None and done >= stop_after:
                    break
                t0 = time.perf_counter()
                if distributed.is_distributed():     # per-rank streams from the run seed: the ranks' random starts differ
                    torch.manual_seed(distributed.batch_seed(self.seed * 100003 + epoch, 1 + rank))
                self.objective.on_epoch_start(epoch, self.epochs)
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
                sums: dict[str, Any] = {}      # weighted sums, kept on the device until the epoch ends
                bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{self.epochs} [{self.objective.name}]",
                           disable=not show, leave=False)
                for i in bar:
                    idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                    if world > 1:                                  # this rank's slice of the global batch
                        mine = idx.tensor_split(world)[rank]
                        self.shard_weight = len(mine) / len(idx)
                        idx = mine
                    xb = x[idx].to(self.device, non_blocking=True)
                    yb = y[idx].to(self.device, non_blocking=True)
                    xb = self.prepare_batch(xb)
                    logs = self.objective.train_step(xb, yb)
                    if self.scheduler is not None and self.scheduler_interval == "step":
                        self._step_schedulers()
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                    if callback is not None:
                        callback(epoch * steps + i, {k: float(v) for k, v in logs.items()})
                    if show and (i % self.log_every == 0 or i == steps - 1):
                        bar.set_postfix(loss=f"{float(logs.get('loss', float('nan'))):.3f}")
                if world > 1:                                      # the epoch's means over every rank's images
                    keys = sorted(sums)
                    total = distributed.all_reduce_sum(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64)
                                                                   .to(self.device) for k in keys]))
                    sums = dict(zip(keys, total))
                record = {"epoch": epoch + 1, **{k: float(v) / n for k, v in sums.items()},
                          "lr": self.optimizer.param_groups[0]["lr"]}
                record.update(self.objective.epoch_logs())
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self._step_schedulers()
                if eval_data is not None:          # sharded over the ranks by featlab.metrics
                    evaluated = self.objective.evaluation_model(self.model)
                    record["clean_acc"] = accuracy(evaluated, *eval_data)
                    if self.eval_attack is not None:
                        record["robust_acc"] = robust_accuracy(evaluated, *eval_data, self.eval_attack(evaluated),
                                                               progress=show, seed=self.seed)
                record["time_s"] = time.perf_counter() - t0
                self.history.append(record)
                if show:
                    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in record.items()))
                if self.checkpoint and main:
                    ckpt.save(self.state_dict(epoch), self.checkpoint)
                distributed.barrier()
                done += 1
                self.start_epoch = epoch + 1
        self.model.eval()
        return self.history


def train_classifier(model_name: str, x: torch.Tensor, y: torch.Tensor, method: str = "standard", epochs: int = 1,
                     batch_size: int = 128, lr: float = 1e-3, device: str | torch.device | None = "auto",
                     eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0,
                     checkpoint: str | None = None, progress: bool | None = None, num_classes: int | None = None,
                     **objective_kwargs: Any):
    """Build a registered model and train it with one objective (Adam); returns (model, history).

    The notebooks' one-liner: ``model, hist = train_classifier("mnist_cnn", x, y, "pgd_at", epochs=2, eps=0.3)``.
    ``seed`` fixes everything random: the initial weights, the data order and the attacks' starts, so
    two processes given the same arguments return the same model.
    """
    from .. import models
    from .._utils import seed_everything
    seed_everything(seed)              # the model's initial weights come from the seed too
    model = models.create(model_name, num_classes=num_classes)
    objective = create_objective(method, **objective_kwargs)
    eval_attack = None
    if method == "pgd_at":
        eps = objective.eps
        eval_attack = lambda m: PGD(m, eps=eps, steps=10)  # noqa: E731
    trainer = Trainer(model, objective, epochs=epochs, batch_size=batch_size,
                      optimizer=torch.optim.Adam(model.parameters(), lr=lr), device=device, seed=seed,
                      checkpoint=checkpoint, eval_attack=eval_attack, progress=progress)
    history = trainer.fit(x, y, eval_data=eval_data)
    return trainer.model, history
