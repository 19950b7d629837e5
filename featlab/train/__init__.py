"""One trainer, pluggable objectives.

An :class:`Objective` says what one batch of training does; the :class:`Trainer` owns the
loop: device (cuda > mps > cpu), the fast path (bf16 autocast and channels_last on CUDA and on
CPUs with native bf16, :func:`featlab.choose_fast_path`), the per-epoch data order (derived from
the seed and the epoch, so a resumed run sees the same batches), tqdm progress, per-epoch history
(loss, train acc, clean acc, robust acc) and atomic, resumable checkpoints.

    >>> model = featlab.models.create("mnist_cnn")
    >>> trainer = Trainer(model, PGDAT(eps=0.3, steps=10), epochs=5, checkpoint="runs/pgd_at.pt")
    >>> history = trainer.fit(x_train, y_train, eval_data=(x_test[:1000], y_test[:1000]))

Objectives: "standard" (cross-entropy), "pgd_at" (Madry et al. 2018), "trades"; AFD and the
denoiser plug in the same way (:mod:`featlab.train.afd`, :mod:`featlab.train.denoiser`: the game
and the pair-making live here; the modules they train and their losses in :mod:`featlab.defenses`). An objective's logs are tensors: the trainer
turns them into numbers once every ``log_every`` steps, so a GPU is not synchronised every step.
"""
from __future__ import annotations

from .afd import AFD, AFDGameWarning
from .denoiser import DenoiserObjective
from .loop import Trainer, Triangle, train_classifier, triangle_schedule, triangle_schedule_for
from .objectives import OBJECTIVES, TRADES, Objective, PGDAT, Standard, create_objective

__all__ = ["AFD", "AFDGameWarning", "DenoiserObjective", "OBJECTIVES", "Objective", "PGDAT", "Standard", "TRADES",
           "Trainer", "Triangle", "create_objective", "train_classifier", "triangle_schedule",
           "triangle_schedule_for"]
