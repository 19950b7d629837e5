"""What tests/test_distributed.py runs, under torchrun (2 processes, gloo) and in one process.

    python tests/dist_worker.py eval OUT
    python tests/dist_worker.py train OUT --method standard|afd [--checkpoint P] [--stop-after K]
    python tests/dist_worker.py resume OUT --resume-dir DIR
    python tests/dist_worker.py fail OUT

Rank 0 (or the single process) saves what it computed to OUT with torch.save.
"""
from __future__ import annotations

import argparse
import sys

import torch

import featlab
from featlab import distributed


def run_eval(out: str) -> None:
    from featlab.attacks import autoattack, from_spec
    from featlab.metrics import predict, robust_correct
    distributed.init("cpu")
    model = featlab.pretrained.load("mnist_cnn_pgd_at", "cpu")
    x, y = featlab.data.load("mnist", "test", limit=200)
    res = {"world_size": distributed.world_size(),
           "pred": predict(model, x, batch_size=50),
           "pgd": robust_correct(model, x, y, from_spec("pgd10", model, 0.3), batch_size=50, progress=False, seed=3),
           # the fast AutoAttack (APGD-CE + APGD-T, 9 targets) with 25 iterations: the CI's time
           "apgd": robust_correct(model, x, y, autoattack(model, 0.3, version="fast", steps=25), batch_size=50,
                                  progress=False, seed=3)}
    if distributed.is_main():
        torch.save(res, out)


def run_train(out: str, method: str, checkpoint: str | None, stop_after: int | None) -> None:
    from featlab.train import AFD
    from featlab.train import Standard, Trainer
    distributed.init("cpu")
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_cnn")     # no BatchNorm: per-rank statistics cannot differ
    x, y = featlab.data.load("mnist", "train", limit=640)
    if method == "afd":
        # eps 0: x_adv = x, so the steps are deterministic and only the gradient averaging is compared.
        # micro_batch 64: one process runs the per-rank parts of 64 and adds their gradients, so its
        # kernels see the shapes each rank sees (fp32 kernels for 64 and 128 images differ in the last
        # bits on some CPUs, and the game amplifies that); under torchrun each rank's 64 are one part
        objective = AFD(model, eps=0.0, steps=1, step_size=0.01, lr_ec=0.02, lr_e=0.01, lr_d=0.05, micro_batch=64)
        opt = objective.optimizer_ec
    else:
        objective = Standard()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.5)
    trainer = Trainer(model, objective, epochs=2, batch_size=128, optimizer=opt, scheduler=sched, device="cpu",
                      precision="fp32", memory_format="contiguous", checkpoint=checkpoint, progress=False)
    history = trainer.fit(x, y, stop_after=stop_after)
    if distributed.is_main():
        extra = objective.discriminator.state_dict() if method == "afd" else {}
        torch.save({"world_size": distributed.world_size(), "model": model.state_dict(), "history": history,
                    "discriminator": extra}, out)


def run_resume(out: str, resume_dir: str) -> None:
    """PGD-10 on 200 images in 4 batches, keeping (and reading back) finished batches in resume_dir."""
    from featlab.evaluate import sweep
    distributed.init("cpu")
    model = featlab.pretrained.load("mnist_cnn_pgd_at", "cpu")
    x, y = featlab.data.load("mnist", "test", limit=200)
    [row] = sweep(model, x, y, ["pgd10"], [0.3], batch_size=50, progress=False, seed=3, resume_dir=resume_dir)
    if distributed.is_main():
        torch.save({"world_size": distributed.world_size(), "correct": row["correct"],
                    "resumed": row.get("resumed_batches", 0)}, out)


def run_fail(out: str) -> None:
    distributed.init("cpu", timeout_s=60)
    if distributed.rank() == 1:
        raise ValueError("boom from rank 1")
    distributed.barrier()          # rank 0 waits here for a rank that is gone: torchrun must end it
    torch.save({"unreachable": True}, out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["eval", "train", "resume", "fail"])
    p.add_argument("out")
    p.add_argument("--method", default="standard", choices=["standard", "afd"])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--resume-dir", default=None)
    a = p.parse_args()
    finished = False
    try:
        if a.mode == "eval":
            run_eval(a.out)
        elif a.mode == "train":
            run_train(a.out, a.method, a.checkpoint, a.stop_after)
        elif a.mode == "resume":
            run_resume(a.out, a.resume_dir)
        else:
            run_fail(a.out)
        finished = True
    finally:
        distributed.shutdown(clean=finished)


if __name__ == "__main__":
    sys.exit(main())
