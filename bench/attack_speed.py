"""featlab PGD speed, as ratios measured in one run on the same model and batch.

(a) overhead  = featlab PGD time / (steps x one forward+backward to the input)            (goal <= 1.10)
(b) plain     = torchattacks PGD time / featlab PGD time, both the plain attack           (parity expected)
(c) early     = torchattacks PGD time / featlab PGD time as robust accuracy runs it        (goal >= 1.2)
                (``run_for_accuracy``: per example the first fooling iterate is kept and its
                gradients stop; the examples misclassified clean are not attacked)
(d) robust_accuracy = a plain loop over torchattacks PGD (attack each batch, then predict) /
                featlab.metrics.robust_accuracy, on the same images                       (goal >= 2)

    python bench/attack_speed.py [--pretrained mnist_cnn_standard] [--batch 256] [--steps 20] [--eps 0.3]

The model is a shipped one (``featlab.pretrained``): an untrained model says nothing about how early
images fall. (c) and (d) come from the early exit, so they depend on the model: on a standard model
most images fall within a few steps, on an adversarially trained one few do (run it with
``--pretrained mnist_resnet_pgd_at`` to see). The robust accuracies of both sides are printed too:
featlab's can only be lower or equal (an example fooled at any step counts as fooled).

Timings interleave the measurements and take medians. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json

import torch
import torchattacks

import featlab
from featlab.attacks import step_size_for

from _timing import interleaved_medians


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrained", default="mnist_cnn_standard")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--n-eval", type=int, default=1000, help="images for (d)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    featlab.seed_everything(0)
    device = featlab.get_device(a.device)
    model = featlab.pretrained.load(a.pretrained, device=device).eval()
    dataset = "mnist" if model.input_shape[0] == 1 else "cifar10"
    xs, ys = featlab.data.load(dataset, "test", limit=a.n_eval)
    x, y = xs[:a.batch].to(device), ys[:a.batch].to(device)
    alpha = step_size_for(a.eps, a.steps)
    ours = featlab.attacks.PGD(model, eps=a.eps, steps=a.steps, step_size=alpha)
    theirs = torchattacks.PGD(model, eps=a.eps, alpha=alpha, steps=a.steps, random_start=True)
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y

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

    def loop_over_torchattacks():    # how robust accuracy is measured without featlab
        correct = 0
        for i in range(0, len(xs), 500):
            xb, yb = xs[i:i + 500].to(device), ys[i:i + 500].to(device)
            adv = theirs(xb, yb)
            with torch.no_grad():
                correct += (model(adv).argmax(1) == yb).sum().item()
        return 100.0 * correct / len(xs)

    def ours_accuracy():
        return featlab.metrics.robust_accuracy(model, xs, ys, ours, progress=False)

    med = interleaved_medians({"fwd_bwd": pgd_budget, "ours": lambda: ours(x, y), "theirs": lambda: theirs(x, y),
                               "ours_early": lambda: ours.run_for_accuracy(x, y, active=clean_ok),
                               "loop_torchattacks": loop_over_torchattacks, "robust_accuracy": ours_accuracy},
                              device, a.repeats, warmup=1)
    fb, o, t, oe = med["fwd_bwd"] / a.steps, med["ours"], med["theirs"], med["ours_early"]
    featlab.seed_everything(0)
    acc_ours, acc_theirs = ours_accuracy(), loop_over_torchattacks()
    result = {"bench": "attack_speed", "model": a.pretrained, "batch": a.batch, "n_eval": len(xs), "steps": a.steps,
              "eps": a.eps, "device": featlab.results.device_description(device), "threads": torch.get_num_threads(),
              "torchattacks": torchattacks.__version__,
              "pgd_over_steps_x_fwd_bwd": round(o / (a.steps * fb), 3),
              "featlab_over_torchattacks_plain": round(t / o, 3),
              "featlab_over_torchattacks_early_exit": round(t / oe, 3),
              "robust_accuracy_over_torchattacks_loop": round(med["loop_torchattacks"] / med["robust_accuracy"], 3),
              "robust_acc": {"featlab": round(acc_ours, 2), "torchattacks_loop": round(acc_theirs, 2)}}
    print(f"one forward+backward {fb * 1e3:.1f} ms; featlab PGD-{a.steps} {o * 1e3:.0f} ms (early exit "
          f"{oe * 1e3:.0f} ms); torchattacks PGD-{a.steps} {t * 1e3:.0f} ms; robust accuracy on {len(xs)} images: "
          f"featlab {med['robust_accuracy']:.2f} s, torchattacks loop {med['loop_torchattacks']:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
