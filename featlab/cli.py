"""Command line: ``featlab train`` and ``featlab eval`` (same code paths as the notebooks).

    featlab train --dataset mnist --model mnist_cnn --method pgd_at --epochs 8 --out runs/mnist_pgd_at
    featlab eval --run runs/mnist_pgd_at --attacks pgd40 fgsm --eps 0.3 --n-eval 1000

A run folder holds ``checkpoint.pt`` (resumable), ``config.json`` and ``history.json``; eval
writes one JSON record per attack into ``results/<run>_<attack>_eps<eps>.json``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import data, models
from ._utils import get_device, seed_everything
from .attacks import FGSM, PGD
from .evaluate import accuracy, device_description, robust_accuracy, write_result
from .train import Trainer, create_objective


def _command() -> str:
    return "featlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def build_attack(spec: str, model: torch.nn.Module, eps: float, norm: str = "linf", seed: int = 0):
    """An attack from a short spec: fgsm, pgdN (N steps, Linf), pgdN_l2, autoattack, apgd (ce + t)."""
    if spec == "fgsm":
        return FGSM(model, eps=eps)
    if spec.startswith("pgd"):
        body, _, tail = spec.partition("_")
        steps = int(body[3:] or 40)
        n = "l2" if tail == "l2" else norm
        step = 0.01 if (n == "linf" and abs(eps - 0.3) < 1e-9 and steps == 40) else 2.5 * eps / steps
        return PGD(model, eps=eps, steps=steps, step_size=step, norm=n)
    if spec in ("autoattack", "apgd"):
        import torchattacks
        version = "standard" if spec == "autoattack" else "rand"
        n_classes = getattr(model, "num_classes", 10)
        norm_name = "Linf" if norm == "linf" else "L2"
        if spec == "apgd":   # the fast variant: APGD-CE + APGD-T only
            ce = torchattacks.APGD(model, norm=norm_name, eps=eps, seed=seed, loss="ce", n_restarts=1)
            t = torchattacks.APGDT(model, norm=norm_name, eps=eps, seed=seed, n_classes=n_classes, n_restarts=1)
            atk = torchattacks.MultiAttack([ce, t])
        else:
            atk = torchattacks.AutoAttack(model, norm=norm_name, eps=eps, version=version, n_classes=n_classes, seed=seed)
        atk.name = spec
        return atk
    raise ValueError(f"attacks: unknown attack spec {spec!r}; allowed: fgsm, pgdN (e.g. pgd40), pgdN_l2, autoattack, apgd")


def cmd_train(a: argparse.Namespace) -> None:
    seed_everything(a.seed)
    device = get_device(a.device)
    dataset = a.dataset or models.default_dataset(a.model)
    x, y = data.load(dataset, "train", limit=a.limit, seed=a.seed)
    xt, yt = data.load(dataset, "test", limit=a.eval_n, seed=a.seed)
    model = models.create(a.model, num_classes=data.info(dataset).num_classes)
    kwargs: dict[str, Any] = {}
    if a.method == "pgd_at":
        kwargs = dict(eps=a.eps, steps=a.attack_steps, eps_start=a.eps_start, ramp_epochs=a.ramp_epochs)
    objective = create_objective(a.method, **kwargs)
    params = model.parameters()
    opt = (torch.optim.Adam(params, lr=a.lr) if a.optimizer == "adam"
           else torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.weight_decay, nesterov=True))
    sched = None
    if a.milestones:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=a.milestones, gamma=0.1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"dataset": dataset, "model": a.model, "method": a.method, "epochs": a.epochs, "seed": a.seed,
              "objective": objective.config(), "optimizer": a.optimizer, "lr": a.lr, "batch_size": a.batch_size,
              "limit": a.limit, "command": _command(), "device": device_description(device)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    eval_attack = None
    if a.method != "standard":
        eval_attack = lambda m: PGD(m, eps=a.eps, steps=10, step_size=2.5 * a.eps / 10)  # noqa: E731
    augment = data.cifar_augment if dataset.startswith("cifar") else None
    t0 = time.time()
    trainer = Trainer(model, objective, epochs=a.epochs, batch_size=a.batch_size, optimizer=opt, scheduler=sched,
                      augment=augment, device=device, checkpoint=str(out / "checkpoint.pt"), seed=a.seed,
                      eval_attack=eval_attack)
    history = trainer.fit(x, y, eval_data=(xt, yt))
    wall = time.time() - t0
    (out / "history.json").write_text(json.dumps({"history": history, "wall_s_this_call": wall}, indent=2) + "\n")
    print(json.dumps(history[-1]))


def cmd_eval(a: argparse.Namespace) -> None:
    seed_everything(a.seed)
    run = Path(a.run)
    config = json.loads((run / "config.json").read_text())
    dataset = config["dataset"]
    device = get_device(a.device)
    model = models.create(config["model"], num_classes=data.info(dataset).num_classes)
    ckpt.load_model_weights(model, run / "checkpoint.pt")
    model.to(device).eval()
    state = ckpt.load(run / "checkpoint.pt")
    history = state.get("history", [])
    train_wall = sum(h.get("time_s", 0.0) for h in history)
    x, y = data.load(dataset, "test", limit=a.n_eval, seed=a.seed)
    t0 = time.time()
    clean = accuracy(model, x, y)
    for spec in a.attacks:
        for eps in a.eps:
            t1 = time.time()
            atk = build_attack(spec, model, eps, norm=a.norm, seed=a.seed)
            rob = robust_accuracy(model, x, y, atk, batch_size=a.batch_size)
            norm = "l2" if spec.endswith("_l2") else a.norm
            rec = {"dataset": dataset, "model": config["model"], "method": config["method"],
                   "threat_model": "white-box", "norm": norm, "eps": eps, "attack": spec, "attack_repr": repr(atk),
                   "n_eval": len(x), "clean_acc": round(clean, 2), "robust_acc": round(rob, 2),
                   "epochs": len(history), "seed": a.seed, "command": _command(),
                   "train_command": config.get("command"), "train_wall_s": round(train_wall, 1),
                   "train_device": config.get("device"), "device": device_description(device),
                   "wall_s": round(time.time() - t1, 1)}
            name = f"{run.name}_{spec}_{norm}_eps{eps:g}"
            path = write_result(name, rec, a.results_dir)
            print(f"{name}: clean {clean:.2f}%  robust {rob:.2f}%  -> {path}")
    print(f"eval wall {time.time() - t0:.1f}s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="featlab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model with one objective; resumable run folder")
    t.add_argument("--dataset", choices=sorted(data.DATASETS), default=None)
    t.add_argument("--model", choices=sorted(models.MODELS), default="mnist_cnn")
    t.add_argument("--method", choices=["standard", "pgd_at"], default="standard")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--milestones", type=int, nargs="*", default=[])
    t.add_argument("--eps", type=float, default=0.3)
    t.add_argument("--attack-steps", type=int, default=10)
    t.add_argument("--eps-start", type=float, default=None)
    t.add_argument("--ramp-epochs", type=int, default=0)
    t.add_argument("--limit", type=int, default=None, help="train on a stratified subset")
    t.add_argument("--eval-n", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run folder; writes results/*.json")
    e.add_argument("--run", required=True)
    e.add_argument("--attacks", nargs="+", default=["pgd40"])
    e.add_argument("--eps", type=float, nargs="+", default=[0.3])
    e.add_argument("--norm", choices=["linf", "l2"], default="linf")
    e.add_argument("--n-eval", type=int, default=1000)
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--results-dir", default="results")
    e.set_defaults(func=cmd_eval)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
