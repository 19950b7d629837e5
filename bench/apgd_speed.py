"""featlab APGD-CE against torchattacks' APGD-CE: speed, measured side by side, and agreement.

Speed, on one batch of a shipped model (interleaved repeats, medians), as torchattacks time / featlab time:
  plain     featlab ``APGD(x, y)``: every example attacked (the training attack's call), no host sync
            in the loop
  same_work featlab ``run_for_accuracy(active=clean-correct, early_exit=False)``: the examples
            torchattacks attacks (it skips those misclassified clean), every step for each
  early     featlab ``run_for_accuracy(active=clean-correct)`` as robust accuracy runs it: a fooled
            example stops costing gradients (results unchanged)
  and budget = steps x one forward+backward of the batch with the parameters frozen: the least any
  APGD can cost; each attack's time over it shows its overhead.

Agreement, on --n test images (default 1,000): success rate (fraction of the images misclassified
after the attack, the clean errors included) of each, with the same eps, steps and 1 restart; they tie
when |diff| <= 1.96 sqrt(2 p (1 - p) / n) + 1/n, p their mean. The two draw different random starts
(torchattacks draws for the clean-correct examples only), so the agreement is statistical; the
arithmetic itself is checked step for step in tests/test_apgd.py.

    OMP_NUM_THREADS=1 python bench/apgd_speed.py [--pretrained mnist_resnet_afd] [--eps 0.3] [--steps 100]
        [--batch 64] [--n 1000] [--repeats 3] [--device cpu|cuda|auto] [--smoke]

Writes bench/results/apgd_speed.json (one record per model/eps/steps/device, updated in place; with
--smoke: apgd_speed.smoke.json). The last line printed is the record as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torchattacks

import featlab
from featlab.attacks import APGD

from _timing import interleaved_medians

RESULTS = Path(__file__).resolve().parent / "results"


def band(p: float, n: int) -> float:
    return 1.96 * math.sqrt(2 * p * (1 - p) / n) + 1 / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrained", default="mnist_resnet_afd")
    p.add_argument("--eps", type=float, default=None, help="default: 0.3 MNIST, 8/255 CIFAR-10")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=64, help="the timed batch")
    p.add_argument("--n", type=int, default=1000, help="images for the agreement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: 16 images, 5 steps, 1 repeat")
    a = p.parse_args()
    if a.smoke:
        a.steps, a.batch, a.n, a.repeats = 5, 16, 32, 1
    torch.set_num_threads(a.threads)
    device = featlab.get_device(a.device)
    model = featlab.pretrained.load(a.pretrained, device=device).eval()
    dataset = "mnist" if model.input_shape[0] == 1 else "cifar10"
    eps = a.eps if a.eps is not None else (0.3 if dataset == "mnist" else 8 / 255)
    xs, ys = featlab.data.load(dataset, "test", limit=max(a.n, a.batch))
    x, y = xs[:a.batch].to(device), ys[:a.batch].to(device)
    ours = APGD(model, eps=eps, steps=a.steps, restarts=1, seed=0)
    theirs = torchattacks.APGD(model, norm="Linf", eps=eps, steps=a.steps, n_restarts=1, loss="ce", seed=0)
    with torch.no_grad():
        ok = model(x).argmax(1) == y

    def budget():
        flags = [(q, q.requires_grad) for q in model.parameters()]
        for q, _ in flags:
            q.requires_grad_(False)
        for _ in range(a.steps):
            xi = x.clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y, reduction="sum"), xi)
        for q, f in flags:
            q.requires_grad_(f)

    load_before = os.getloadavg()
    t = interleaved_medians({
        "torchattacks": lambda: theirs(x, y),
        "plain": lambda: ours(x, y),
        "same_work": lambda: ours.run_for_accuracy(x, y, active=ok, early_exit=False),
        "early": lambda: ours.run_for_accuracy(x, y, active=ok, early_exit=True),
        "budget": budget,
    }, device, repeats=a.repeats, warmup=1)
    speed = {k: round(t["torchattacks"] / t[k], 3) for k in ("plain", "same_work", "early")}

    fooled = {"featlab": 0, "torchattacks": 0}
    both = 0
    wall = {"featlab": 0.0, "torchattacks": 0.0}
    clean_correct = 0
    for i in range(0, a.n, 250):
        xb, yb = xs[i:min(i + 250, a.n)].to(device), ys[i:min(i + 250, a.n)].to(device)
        with torch.no_grad():
            okb = model(xb).argmax(1) == yb
        clean_correct += int(okb.sum())
        t0 = time.perf_counter()
        adv_theirs = theirs(xb, yb).detach()
        t1 = time.perf_counter()
        adv_ours = ours.run_for_accuracy(xb, yb, active=okb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall["torchattacks"] += t1 - t0
        wall["featlab"] += time.perf_counter() - t1
        for adv in (adv_ours, adv_theirs):
            assert float((adv - xb).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        with torch.no_grad():
            f_ours, f_theirs = model(adv_ours).argmax(1) != yb, model(adv_theirs).argmax(1) != yb
        fooled["featlab"] += int(f_ours.sum())
        fooled["torchattacks"] += int(f_theirs.sum())
        both += int((f_ours & f_theirs).sum())
    rate = {k: v / a.n for k, v in fooled.items()}
    noise = band((rate["featlab"] + rate["torchattacks"]) / 2, a.n)
    diff = rate["featlab"] - rate["torchattacks"]
    load_after = os.getloadavg()

    print(f"APGD-CE, {a.pretrained} ({dataset}), eps {eps:.4g}, {a.steps} steps, 1 restart, device {device}, "
          f"{a.threads} thread(s); load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}")
    print(f"speed on one batch of {a.batch} ({int(ok.sum())} correct clean), "
          f"medians of {a.repeats} interleaved repeats:")
    print(f"  torchattacks {t['torchattacks']:.2f} s ({t['torchattacks'] / t['budget']:.2f} x budget)   "
          f"budget (steps x fwd+bwd) {t['budget']:.2f} s")
    for k, label in (("plain", "featlab APGD(x, y), all examples"),
                     ("same_work", "featlab run_for_accuracy, early_exit=False"),
                     ("early", "featlab run_for_accuracy, early exit")):
        print(f"  {label:45s} {t[k]:.2f} s ({t[k] / t['budget']:.2f} x budget)   "
              f"torchattacks/featlab = {speed[k]:.2f}x")
    print(f"agreement on {a.n} test images ({clean_correct} correct clean): success rate featlab "
          f"{100 * rate['featlab']:.1f}%, torchattacks {100 * rate['torchattacks']:.1f}%, "
          f"diff {100 * diff:+.1f} points, noise band +/-{100 * noise:.1f} -> "
          f"{'TIE (within binomial noise)' if abs(diff) <= noise else 'DIFFERENT'}; "
          f"fooled by both {both}; wall featlab {wall['featlab']:.1f} s, torchattacks {wall['torchattacks']:.1f} s "
          f"({wall['torchattacks'] / wall['featlab']:.2f}x)")
    rec = {"bench": "apgd_speed", "model": a.pretrained, "dataset": dataset, "eps": eps, "steps": a.steps,
           "restarts": 1, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else platform.processor() or platform.machine(), "threads": a.threads, "batch": a.batch,
           "batch_clean_correct": int(ok.sum()), "repeats": a.repeats,
           "seconds": {k: round(v, 4) for k, v in t.items()}, "speedup_over_torchattacks": speed,
           "n": a.n, "clean_correct": clean_correct, "success_rate": {k: round(v, 4) for k, v in rate.items()},
           "fooled_by_both": both, "diff": round(diff, 4), "noise_band": round(noise, 4), "tie": abs(diff) <= noise,
           "agreement_wall_s": {k: round(v, 2) for k, v in wall.items()},
           "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
           "smoke": a.smoke, "commit": featlab._utils.git_commit(short=True), "torch": torch.__version__,
           "torchattacks": torchattacks.__version__,
           "command": "OMP_NUM_THREADS=1 python bench/apgd_speed.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v not in (None, False) and k != "smoke")
           + (" --smoke" if a.smoke else "")}
    out = RESULTS / ("apgd_speed.smoke.json" if a.smoke else "apgd_speed.json")
    records = json.loads(out.read_text()) if out.is_file() else {}
    records[f"{a.pretrained}|eps={eps:.4g}|steps={a.steps}|{device.type}"] = rec
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
