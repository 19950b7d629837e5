"""AFD training step time over PGD-AT training step time, same model, batch and attack.

    python bench/afd_step.py [--steps 10] [--batch 128] [--repeats 5]

Goal: <= 1.15 (AFD adds a clean pass for E+C and the discriminator; the attack dominates).
The last line printed is one JSON object with the ratio as a named key.
"""
from __future__ import annotations

import argparse
import json
import torch

import featlab
from featlab.attacks import step_size_for
from featlab.train import AFD
from featlab.train import PGDAT, Trainer

from _timing import interleaved_medians


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
    step = step_size_for(0.3, a.steps)
    m_afd = featlab.models.create(a.model).to(device)
    afd = AFD(m_afd, eps=0.3, steps=a.steps, step_size=step)
    Trainer(m_afd, afd, optimizer=afd.optimizer_ec, device=device, progress=False)
    m_at = featlab.models.create(a.model).to(device)
    at = PGDAT(eps=0.3, steps=a.steps, step_size=step)
    Trainer(m_at, at, optimizer=torch.optim.SGD(m_at.parameters(), lr=0.1, momentum=0.9), device=device, progress=False)

    med = interleaved_medians({"afd": lambda: afd.train_step(x, y), "pgd_at": lambda: at.train_step(x, y)},
                              device, a.repeats)
    ta, tp = med["afd"], med["pgd_at"]
    print(f"AFD step {ta * 1e3:.0f} ms, PGD-AT step {tp * 1e3:.0f} ms (PGD-{a.steps}, batch {a.batch}, {device})")
    print(json.dumps({"model": a.model, "batch": a.batch, "attack_steps": a.steps, "device": str(device),
                      "afd_step_over_pgd_at_step": round(ta / tp, 3)}))


if __name__ == "__main__":
    main()
