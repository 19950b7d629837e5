"""Training speed of the fast path (bf16 autocast + channels_last where the device has them) against
plain fp32 NCHW, as ratios measured in one run on the same model, batch and initial weights.

    python bench/train_speed.py [--models mnist_resnet preact_resnet18] [--objectives standard pgd_at afd]
                                [--attack-steps 5] [--repeats 3] [--threads 1]
    python bench/train_speed.py --parity [--n-train 10000] [--seed 0]   # 1-epoch PGD-AT, fp32 vs fast path

Speed mode: for every model and objective, one ``Trainer`` per path takes whole training steps
(``objective.train_step`` on the trainer's prepared batch: attack, forward, backward, optimiser), the
two paths taking turns; each step's median time gives samples per second. One JSON line per model and
objective, then a summary line with the ratios (goal >= 2.5 on a CPU with native bf16).

Parity mode: mnist_resnet trained for ``--epochs`` (default 1) of PGD-AT (PGD-10, eps ramped from 0.1 to 0.3) on
``--n-train`` real MNIST images, once per path from the same seed; clean and PGD-20 accuracy on
1,000 test images, evaluated in fp32. Goal: the fast path within 1.5 points of fp32.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch

import featlab
from featlab.attacks import step_size_for
from featlab.train import PGDAT, Standard, Trainer

from _timing import interleaved_medians

BATCH = {"mnist_resnet": 128, "mnist_cnn": 128, "preact_resnet18": 64, "resnet18": 64, "cifar_airnet": 128, "resnet20": 128}
PATHS = {"fp32_nchw": dict(precision="fp32", memory_format="contiguous"),
         "fast": dict(precision="auto", memory_format="auto")}


def _objective(name: str, model: torch.nn.Module, eps: float, steps: int):
    if name == "standard":
        return Standard()
    if name == "pgd_at":
        return PGDAT(eps=eps, steps=steps)
    if name == "trades":
        return featlab.train.TRADES(eps=eps, steps=steps)
    if name == "afd":
        from featlab.train import AFD
        return AFD(model, eps=eps, steps=steps, step_size=step_size_for(eps, steps))
    raise ValueError(f"--objectives: unknown {name!r}; allowed: standard, pgd_at, trades, afd")


def _trainer(model: torch.nn.Module, objective_name: str, eps: float, steps: int, path: dict) -> Trainer:
    objective = _objective(objective_name, model, eps, steps)
    opt = getattr(objective, "optimizer_ec", None) or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return Trainer(model, objective, optimizer=opt, device="cpu" if not torch.cuda.is_available() else "auto",
                   progress=False, **path)


def speed(a: argparse.Namespace) -> None:
    ratios = {}
    for model_name in a.models:
        batch = a.batch or BATCH.get(model_name, 64)
        base = featlab.models.create(model_name)
        c, h, w = base.input_shape
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, c, h, w, generator=g)
        y = torch.randint(0, base.num_classes, (batch,), generator=g)
        eps = 0.3 if c == 1 else 8 / 255
        for obj in a.objectives:
            trainers = {k: _trainer(copy.deepcopy(base), obj, eps, a.attack_steps, p) for k, p in PATHS.items()}
            dev = trainers["fast"].device
            batches = {k: (t.prepare_batch(x.to(dev)), y.to(dev)) for k, t in trainers.items()}
            med = interleaved_medians({k: (lambda t=t, b=batches[k]: t.objective.train_step(*b))
                                       for k, t in trainers.items()}, dev, a.repeats, warmup=1)
            sps = {k: batch / v for k, v in med.items()}
            ratio = sps["fast"] / sps["fp32_nchw"]
            ratios[f"{model_name}/{obj}"] = round(ratio, 2)
            print(json.dumps({"model": model_name, "objective": obj, "batch": batch, "attack_steps": a.attack_steps,
                              "fast_path": trainers["fast"].fast.describe(),
                              "samples_per_s": {k: round(v, 1) for k, v in sps.items()},
                              "fast_over_fp32": round(ratio, 2)}), flush=True)
    print(json.dumps({"bench": "train_speed", "device": featlab.results.device_description(),
                      "cpu_native_bf16": featlab.cpu_has_native_bf16(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "fast_over_fp32": ratios}))


def parity(a: argparse.Namespace) -> None:
    x, y = featlab.data.load("mnist", "train", limit=a.n_train)
    xt, yt = featlab.data.load("mnist", "test", limit=1000)
    out = {}
    for k, p in PATHS.items():
        featlab.seed_everything(a.seed)
        model = featlab.models.create("mnist_resnet")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        trainer = Trainer(model, PGDAT(eps=0.3, steps=10, eps_start=0.1, ramp_epochs=max(1, a.epochs - 1)),
                          epochs=a.epochs, optimizer=opt,
                          seed=a.seed, progress=False, **p)
        trainer.fit(x, y)
        train_s = time.perf_counter() - t0
        m = trainer.model.eval()
        torch.manual_seed(a.seed)
        out[k] = {**trainer.fast.describe(), "train_s": round(train_s, 1),
                  "clean": featlab.metrics.accuracy(m, xt, yt),
                  "pgd20": featlab.metrics.robust_accuracy(m, xt, yt, featlab.attacks.PGD(m, eps=0.3, steps=20),
                                                            progress=False)}
        print(json.dumps({k: out[k]}), flush=True)
    print(json.dumps({"bench": "train_parity", "seed": a.seed, "model": "mnist_resnet", "method": "pgd_at",
                      "epochs": a.epochs,
                      "n_train": a.n_train, "n_eval": 1000, "eval": "fp32, PGD-20 eps 0.3",
                      "device": featlab.results.device_description(), "threads": torch.get_num_threads(),
                      "paths": out, "train_speedup": round(out["fp32_nchw"]["train_s"] / out["fast"]["train_s"], 2),
                      "pgd20_gap_points": round(out["fast"]["pgd20"] - out["fp32_nchw"]["pgd20"], 2)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mnist_resnet", "preact_resnet18"])
    p.add_argument("--objectives", nargs="+", default=["standard", "pgd_at", "afd"])
    p.add_argument("--batch", type=int, default=None, help="default: 128 for MNIST models, 64 for ResNet-18s")
    p.add_argument("--attack-steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parity", action="store_true")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="parity: the run seed (weights, data order, attacks)")
    p.add_argument("--epochs", type=int, default=1, help="parity: PGD-AT epochs (eps ramps 0.1 -> 0.3 over all but "
                                                         "the last)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    featlab.seed_everything(0)
    parity(a) if a.parity else speed(a)


if __name__ == "__main__":
    main()
