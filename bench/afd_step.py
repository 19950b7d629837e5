"""AFD training step time over PGD-AT training step time, same model, batch and attack.

    python bench/afd_step.py [--steps 10] [--batch 128] [--repeats 5]

Goal: <= 1.15 (AFD adds a clean pass for E+C and the discriminator; the attack dominates).
The last line printed is one JSON object with the ratio as a named key.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import featlab
from featlab.defenses import AFD
from featlab.train import PGDAT, Trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mnist_resnet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    featlab.seed_everything(0)
    device = featlab.get_device(a.device)
    if featlab.data.available("mnist", "train"):
        x, y = featlab.data.load("mnist", "train", limit=a.batch)
    else:
        x, y = torch.rand(a.batch, 1, 28, 28), torch.randint(0, 10, (a.batch,))
    x, y = x.to(device), y.to(device)
    step = 2.5 * 0.3 / a.steps
    m_afd = featlab.models.create(a.model).to(device)
    afd = AFD(m_afd, eps=0.3, steps=a.steps, step_size=step)
    Trainer(m_afd, afd, optimizer=afd.optimizer_ec, device=device, progress=False)
    m_at = featlab.models.create(a.model).to(device)
    at = PGDAT(eps=0.3, steps=a.steps, step_size=step)
    Trainer(m_at, at, optimizer=torch.optim.SGD(m_at.parameters(), lr=0.1, momentum=0.9), device=device, progress=False)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(2):
        afd.train_step(x, y), at.train_step(x, y)
    t_afd, t_at = [], []
    for _ in range(a.repeats):
        t_afd.append(timed(lambda: afd.train_step(x, y)))
        t_at.append(timed(lambda: at.train_step(x, y)))
    ta, tp = statistics.median(t_afd), statistics.median(t_at)
    print(f"AFD step {ta * 1e3:.0f} ms, PGD-AT step {tp * 1e3:.0f} ms (PGD-{a.steps}, batch {a.batch}, {device})")
    print(json.dumps({"model": a.model, "batch": a.batch, "attack_steps": a.steps, "device": str(device),
                      "afd_step_over_pgd_at_step": round(ta / tp, 3)}))


if __name__ == "__main__":
    main()
