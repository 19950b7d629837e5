"""What one move of the attack explorer's eps slider costs (notebooks/04), as ratios measured in one run.

(a) update / pgd    = one uncached explorer update (PGD on one image, captum IG from two baselines and
                      Saliency, the feature probe, the figure) / the PGD attack alone on that image
(b) update / cached = the same update / going back to a setting already visited (the cache)

    python bench/widget_latency.py [--pretrained mnist_cnn_standard] [--steps 10] [--repeats 5]

Each repetition uses a new eps (an uncached setting). Medians over the repetitions; the absolute seconds are
printed for context only: they depend on the machine and its load. The last line printed is one JSON object.
(The cached/uncached ratio is also asserted in tests/test_widgets.py.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import featlab  # noqa: E402
from featlab import widgets  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrained", default="mnist_cnn_standard")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    featlab.seed_everything(0)
    model = featlab.pretrained.load(a.pretrained).eval()
    dataset = featlab.pretrained.info(a.pretrained)["dataset"]
    x, y = featlab.data.load(dataset, "test", limit=16)
    explorer = widgets.AttackExplorer({"m": model}, x, y, dataset=dataset)
    base = featlab.data.threat_defaults(dataset)["eps"]
    times: dict[str, list[float]] = {"pgd": [], "update": [], "cached": []}
    for i in range(a.repeats + 1):                  # the first round warms up and is not counted
        eps = base * (0.5 + 0.1 * i)
        t = time.perf_counter()
        widgets.make_attack(model, "PGD Linf", eps, a.steps)(x[1:2], y[1:2])
        t_pgd = time.perf_counter() - t
        t = time.perf_counter()
        plt.close(explorer.figure(explorer.compute("m", "PGD Linf", eps, a.steps, 1)))
        t_update = time.perf_counter() - t
        t = time.perf_counter()
        explorer.compute("m", "PGD Linf", eps, a.steps, 1)
        t_cached = time.perf_counter() - t
        if i:
            for k, v in zip(times, (t_pgd, t_update, t_cached)):
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": a.pretrained, "steps": a.steps, "repeats": a.repeats, "threads": a.threads,
           "update_over_pgd": round(med["update"] / med["pgd"], 1),
           "update_over_cached": round(med["update"] / max(med["cached"], 1e-9)),
           "seconds_for_context": {k: round(v, 5) for k, v in med.items()}}
    print(f"one explorer update costs {out['update_over_pgd']}x the PGD-{a.steps} attack alone, and "
          f"{out['update_over_cached']}x going back to a cached setting")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
