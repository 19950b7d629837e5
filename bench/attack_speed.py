"""featlab PGD speed, as ratios measured in one run on the same model and batch.

(a) overhead = featlab PGD time / (steps x one forward+backward to the input)   (goal <= 1.10)
(b) speedup  = featlab PGD throughput / torchattacks PGD throughput            (goal >= 1.0)

    python bench/attack_speed.py [--model mnist_cnn] [--batch 256] [--steps 20] [--repeats 5]

Timings interleave the three measurements and take medians. The last line printed is one JSON
object with the ratios as named keys.
"""
from __future__ import annotations

import argparse
import json

import torch
import torchattacks

import featlab

from _timing import interleaved_medians


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    featlab.seed_everything(0)
    device = featlab.get_device(a.device)
    model = featlab.models.create(a.model).to(device).eval()
    dataset = featlab.models.default_dataset(a.model)
    if featlab.data.available(dataset, "test"):
        x, y = featlab.data.load(dataset, "test", limit=a.batch)
    else:   # timing only: random images of the right shape are as good
        x, y = torch.rand(a.batch, *model.input_shape), torch.randint(0, model.num_classes, (a.batch,))
    x, y = x.to(device), y.to(device)
    alpha = 2.5 * a.eps / a.steps
    ours = featlab.attacks.PGD(model, eps=a.eps, steps=a.steps, step_size=alpha)
    theirs = torchattacks.PGD(model, eps=a.eps, alpha=alpha, steps=a.steps, random_start=True)

    def fwd_bwd():     # the least one PGD step can cost: parameters frozen, as featlab's attacks run
        for prm in model.parameters():
            prm.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xi), y, reduction="sum")
        torch.autograd.grad(loss, xi)
        for prm in model.parameters():
            prm.requires_grad_(True)

    def pgd_budget():    # what PGD must at least cost: steps x one forward+backward
        for _ in range(a.steps):
            fwd_bwd()

    med = interleaved_medians({"fwd_bwd": pgd_budget, "ours": lambda: ours(x, y), "theirs": lambda: theirs(x, y)},
                              device, a.repeats)
    fb, o, t = med["fwd_bwd"] / a.steps, med["ours"], med["theirs"]
    result = {"model": a.model, "batch": a.batch, "steps": a.steps, "device": str(device),
              "threads": torch.get_num_threads(), "torchattacks": torchattacks.__version__,
              "pgd_over_steps_x_fwd_bwd": round(o / (a.steps * fb), 3),
              "featlab_over_torchattacks_throughput": round(t / o, 3)}
    print(f"one forward+backward {fb * 1e3:.1f} ms; featlab PGD-{a.steps} {o * 1e3:.0f} ms; "
          f"torchattacks PGD-{a.steps} {t * 1e3:.0f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
