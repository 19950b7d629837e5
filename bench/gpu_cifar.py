"""The CIFAR-10 GPU check (``make gpu-cifar``): PreAct ResNet-18 PGD-AT on one GPU inside a wall budget.

1. A timed probe of the training step (PGD-``--steps`` AT, bf16 autocast + channels_last, batch
   ``--batch-size``) sets the number of epochs that fits ``--train-budget-s`` (at most ``--max-epochs``):
   the triangle LR schedule needs its length up front, so the budget is met by the schedule, not by
   stopping a run half-way.
2. ``featlab train --model preact_resnet18 --method pgd_at`` on all 50,000 training images with that many
   epochs (random crop + flip, SGD with Nesterov momentum, weight decay 5e-4, triangle LR).
3. ``featlab eval``: clean and PGD-20 at 8/255 on ``--n-eval`` test images, then AutoAttack (standard,
   torchattacks) on the same images, each an ordinary featlab record.

Everything goes under ``--out`` (default ``$OUT``): ``gpu_cifar.jsonl`` (one JSON line per stage), a tarball
of the run's config and history and of the eval records, and the trained weights in fp16 split into two
safetensors files (each under the device tool's 16 MiB per file). It is written again after every stage,
so a run stopped at its time limit still returns the stages it finished (training is one stage).

    python bench/gpu_cifar.py [--out DIR] [--train-budget-s 240] [--steps 3] [--no-autoattack]
    python bench/gpu_cifar.py --smoke       # a CPU check of this script: 1,000 images, 1 epoch, batch 64,
                                            # 20 eval images, no AutoAttack, its run under --out
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import featlab  # noqa: E402
from featlab import checkpoint as ckpt, cli  # noqa: E402
from featlab._utils import inputs_checked  # noqa: E402
from featlab.train import PGDAT, Trainer  # noqa: E402

EPS = 8 / 255
N_TRAIN = 50000


def emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "gpu_cifar.jsonl", "a") as f:
        f.write(line + "\n")


def probe_step_s(steps: int, batch: int, lr: float, device: str, n: int = 10) -> float:
    """Median seconds of one PGD-AT training step on random images (the time of a step does not depend on
    the pixels), after three warm-up steps."""
    featlab.seed_everything(0)
    model = featlab.models.create("preact_resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t = Trainer(model, PGDAT(eps=EPS, steps=steps), optimizer=opt, device=device, progress=False)
    x = torch.rand(batch, 3, 32, 32, device=t.device)
    y = torch.randint(0, 10, (batch,), device=t.device)
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    times = []
    with inputs_checked():            # as in the training loop: no value check (a device sync) per forward
        for i in range(3 + n):
            sync()
            t0 = time.perf_counter()
            t.objective.train_step(t.prepare_batch(x), y)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    del t, model, opt
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return sorted(times)[len(times) // 2]


def epochs_for_budget(step_s: float, n_train: int, batch: int, pgd_steps: int, n_eval: int, budget_s: float,
                      max_epochs: int) -> tuple[int, float]:
    """(epochs, estimated seconds per epoch): as many epochs as fit ``budget_s``, between 1 and ``max_epochs``.

    An epoch is its training steps (``step_s`` each: PGD-``pgd_steps`` + one update, ``pgd_steps + 2`` passes)
    and the trainer's per-epoch PGD-10 check on ``n_eval`` test images (11 passes, no update), plus 10%.
    """
    if step_s <= 0 or budget_s <= 0:
        raise ValueError(f"step_s and budget_s must be > 0 (got {step_s}, {budget_s})")
    passes_per_step = pgd_steps + 2
    epoch_s = 1.1 * step_s * (math.ceil(n_train / batch) + (11 / passes_per_step) * math.ceil(n_eval / batch))
    return max(1, min(max_epochs, int(budget_s // epoch_s))), epoch_s


def pack(out: Path, run: Path, results: Path) -> None:
    """The run's config and history, the eval records (one tarball), the weights in fp16 (two files)."""
    tmp = out / "gpu_cifar_records.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in ("config.json", "history.json"):
            if (run / f).exists():
                tar.add(run / f, arcname=f"run/{f}")
        if results.exists():
            for f in sorted(results.glob("*.json")):
                tar.add(f, arcname=f"results/{f.name}")
    os.replace(tmp, out / "gpu_cifar_records.tgz")
    if (run / "checkpoint.pt").exists():
        from safetensors.torch import save_file
        state = ckpt.load(run / "checkpoint.pt")["model"]     # checksummed, weights_only
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        total, acc, first = sum(v.numel() * v.element_size() for v in half.values()), 0, []
        for k, v in half.items():                 # the first half of the bytes, then the rest
            if acc < total / 2:
                first.append(k)
                acc += v.numel() * v.element_size()
        for i, part in enumerate((first, [k for k in half if k not in first])):
            save_file({k: half[k] for k in part}, str(out / f"gpu_preact_weights_part{i + 1}.safetensors"),
                      metadata={"epoch": str(len(json.loads((run / "history.json").read_text())["history"]))
                                if (run / "history.json").exists() else "?"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "build/gpu_cifar"))
    p.add_argument("--run", default="runs/gpu_preact_pgd_at", help="the training run's folder")
    p.add_argument("--train-budget-s", type=float, default=240.0)
    p.add_argument("--max-epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=3, help="PGD steps of the training attack (step 2.5 * eps / steps)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.4, help="peak of the triangle schedule")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--skip-train", action="store_true", help="evaluate the finished run in --run (a stopped check)")
    p.add_argument("--smoke", action="store_true", help="CPU check of this script: 1,000 train images, 1 epoch")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print(f"gpu-cifar: no CUDA device on this machine (torch {torch.__version__}); nothing to run. "
              "Run it on a GPU machine, or `--smoke` to check the script on a CPU.")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.smoke:      # small everything, and its own run folder (a real run never resumes a smoke checkpoint)
        a.n_eval, a.batch_size, a.no_autoattack = 20, 64, True
        run = out / "smoke_run"
    else:
        run = Path(a.run)
    results = run / "results"
    device = "cuda" if cuda else "cpu"
    # cudnn.benchmark stays off: the evaluation's early exit shrinks the batch to a new size at every step, and a
    # benchmark per new shape cost 2-21 s per PGD-10 batch of 500 on an H200 (the first run of this script)
    info = {"check": "device", "name": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda}
    try:
        import torchattacks
        info["torchattacks"] = torchattacks.__version__
    except ImportError:
        info["torchattacks"] = None
    emit(out, info)

    if not a.skip_train:
        train_run(a, out, run, results, device)
    evaluate(a, out, run, results, device)
    print("gpu-cifar: done")
    return 0


def train_run(a: argparse.Namespace, out: Path, run: Path, results: Path, device: str) -> None:
    n_train = 1000 if a.smoke else N_TRAIN
    step_s = probe_step_s(a.steps, a.batch_size, a.lr, device, n=2 if a.smoke else 10)
    epochs, epoch_s = epochs_for_budget(step_s, n_train, a.batch_size, a.steps, a.n_eval, a.train_budget_s,
                                        a.max_epochs)
    epochs = 1 if a.smoke else epochs
    emit(out, {"check": "probe", "pgd_steps": a.steps, "batch": a.batch_size, "step_s": round(step_s, 4),
               "images_per_s": round(a.batch_size / step_s, 1), "epoch_s_estimate": round(epoch_s, 1),
               "epochs": epochs, "train_budget_s": a.train_budget_s})

    train = ["train", "--dataset", "cifar10", "--model", "preact_resnet18", "--method", "pgd_at",
             "--epochs", str(epochs), "--batch-size", str(a.batch_size), "--optimizer", "sgd", "--lr", str(a.lr),
             "--weight-decay", "5e-4", "--lr-schedule", "triangle", "--eps", repr(EPS),
             "--attack-steps", str(a.steps), "--eval-n", str(a.n_eval), "--device", device, "--out", str(run)]
    if a.smoke:
        train += ["--limit", str(n_train)]
    t0 = time.perf_counter()
    cli.main(train)
    hist = json.loads((run / "history.json").read_text())["history"]
    emit(out, {"check": "train", "wall_s": round(time.perf_counter() - t0, 1), "epochs": len(hist),
               "last": hist[-1]})
    pack(out, run, results)


def evaluate(a: argparse.Namespace, out: Path, run: Path, results: Path, device: str) -> None:
    evals = [["--attacks", "pgd20"]] + ([] if a.no_autoattack else [["--attacks", "autoattack", "--large-eps", "0"]])
    for extra in evals:
        t0 = time.perf_counter()
        cli.main(["eval", "--run", str(run), *extra, "--eps", repr(EPS), "--n-eval", str(a.n_eval),
                  "--device", device, "--results-dir", str(results)])
        recs = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
        emit(out, {"check": "eval " + extra[1], "wall_s": round(time.perf_counter() - t0, 1),
                   "records": [{k: r.get(k) for k in ("attack", "eps", "n_eval", "clean_acc", "robust_acc", "wall_s")}
                               for r in recs]})
        pack(out, run, results)


if __name__ == "__main__":
    sys.exit(main())
