"""robust_accuracy with and without the per-example early exit: the same number, and the time ratio,
on shipped models and the same 1,000 test images, in one run.

    python bench/early_exit.py [--models mnist_cnn_standard mnist_resnet_pgd_at] [--steps 20]

For each model and setting (eps 0.1 with one run; eps 0.3 with two restarts) one JSON line: the robust
accuracy of both (they must be equal) and full time / early-exit time. The last line sums them up.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import featlab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mnist_cnn_standard", "mnist_resnet_pgd_at"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y = featlab.data.load("mnist", "test", limit=a.n_eval)
    rows = []
    for name in a.models:
        model = featlab.pretrained.load(name).eval()
        for eps, restarts in ((0.1, 1), (0.3, 2)):
            out = {}
            for early in (True, False):
                featlab.seed_everything(0)
                t = time.perf_counter()
                acc = featlab.metrics.robust_accuracy(
                    model, x, y, featlab.attacks.PGD(model, eps=eps, steps=a.steps, restarts=restarts),
                    progress=False, early_exit=early)
                out[early] = (acc, time.perf_counter() - t)
            row = {"model": name, "eps": eps, "restarts": restarts, "steps": a.steps, "n_eval": len(x),
                   "robust_acc_early_exit": out[True][0], "robust_acc_full": out[False][0],
                   "time_s_early_exit": round(out[True][1], 1), "time_s_full": round(out[False][1], 1),
                   "full_over_early_exit": round(out[False][1] / out[True][1], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"bench": "early_exit", "device": featlab.results.device_description(),
                      "same_number_everywhere": all(r["robust_acc_early_exit"] == r["robust_acc_full"] for r in rows),
                      "full_over_early_exit": {f"{r['model']}/eps{r['eps']}": r["full_over_early_exit"] for r in rows}}))


if __name__ == "__main__":
    main()
