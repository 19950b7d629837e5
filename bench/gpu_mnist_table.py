"""MNIST on one GPU, within a fixed time: AFD, its no-game ablation, PGD-AT and TRADES trained with
the same encoder, training attack budget, optimiser and epochs, then the robustness table of issue
#16 on 1,000 stratified test images (clean, PGD-40, APGD, Square, AutoAttack at Linf 0.3; APGD at
0.35 and 0.4; L2 PGD-40 at 2) and the separability probe.

The four runs share the GPU (four processes: the small encoder leaves it mostly idle otherwise).
The number of epochs is not guessed: a calibration run (2 short epochs of each method, all four at
once, as in the real runs) measures seconds per step under that sharing, and each method gets the
most epochs that fit ``--train-budget-s``, with the reference schedule's LR drops at 50% and 80%.

    python bench/gpu_mnist_table.py --out $OUT --train-budget-s 300 --deadline-s 560 --commit SHA

Everything goes to ``--out``: ``gpu_mnist.jsonl`` (one line per step), ``gpu_mnist.tar.gz`` (the run
folders, the results records and every log). Runs without CUDA too (``--device cpu``, for a dry
run with ``--limit``), but it is meant for a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = time.monotonic()

COMMON = ["--model", "mnist_resnet", "--eps", "0.3", "--batch-size", "128", "--seed", "0"]
SAME_OPT = ["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "1e-4"]   # AFD's E+C optimiser
METHODS = {
    "afd": ["--method", "afd", "--train-attack", "apgd-ce", "--attack-steps", "40"],
    "afd_nogame": ["--method", "afd", "--afd-no-game", "--train-attack", "apgd-ce", "--attack-steps", "40"],
    "pgd_at": ["--method", "pgd_at", "--train-attack", "apgd-ce", "--attack-steps", "40"] + SAME_OPT,
    "trades": ["--method", "trades", "--attack-steps", "40"] + SAME_OPT,
}
EVALS = [
    ["--attacks", "pgd40@0.01", "apgd", "square", "--eps", "0.3"],     # Madry's PGD-40; one sweep: the checklist compares them
    ["--attacks", "autoattack", "--eps", "0.3"],
    ["--attacks", "apgd", "--eps", "0.35", "0.4"],
    ["--attacks", "pgd40", "--norm", "l2", "--eps", "2"],
]


def left(deadline: float) -> float:
    return deadline - (time.monotonic() - T0)


def emit(out: Path, record: dict) -> None:
    record = {"t_s": round(time.monotonic() - T0, 1), **record}
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "gpu_mnist.jsonl", "a") as f:
        f.write(line + "\n")


def featlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "featlab.cli", *args]


def run_parallel(jobs: dict[str, list[list[str]]], timeout: float, logdir: Path) -> dict[str, int]:
    """Each job is a list of commands run one after another; the jobs run at once. Returns rc per job
    (124 when the time ran out: the rest of that job's commands are skipped)."""
    procs, logs, rc = {}, {}, {}
    queues = {k: list(v) for k, v in jobs.items()}
    start = time.monotonic()

    def launch(k: str) -> None:
        cmd = queues[k].pop(0)
        logs[k] = open(logdir / f"{k}.log", "a")
        logs[k].write("$ " + " ".join(cmd) + "\n")
        logs[k].flush()
        procs[k] = subprocess.Popen(cmd, cwd=ROOT, stdout=logs[k], stderr=subprocess.STDOUT)

    for k in queues:
        launch(k)
    while procs:
        time.sleep(1.0)
        for k, p in list(procs.items()):
            if p.poll() is None:
                if time.monotonic() - start > timeout:
                    p.kill()
                    p.wait()
                    rc[k] = 124
                    del procs[k]
                continue
            rc[k] = p.returncode
            del procs[k]
            if p.returncode == 0 and queues[k]:
                launch(k)
    return rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "build/gpu_mnist"))
    p.add_argument("--train-budget-s", type=float, default=300.0)
    p.add_argument("--deadline-s", type=float, default=560.0, help="everything, the archive included")
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=None, help="train on a subset (dry runs)")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--cal-steps", type=int, default=30, help="steps per calibration epoch")
    p.add_argument("--work", default="/tmp/gpu_mnist_work", help="run folders and logs (archived into --out)")
    p.add_argument("--runs", nargs="*", default=None,
                   help="evaluate these run folders (no training): three jobs each (the eps-0.3 sweep, AutoAttack, "
                        "APGD at 0.35/0.4 and L2 PGD at 2), all at once")
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--commit", default=None, help="the commit of the tree sent here (git on the device may see "
                                                  "no or a stale .git; this is written into every record)")
    a = p.parse_args()
    out = Path(a.out)
    work = Path(a.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    emit(out, {"step": "device", "cuda": torch.cuda.is_available(),
               "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__})
    dev = ["--device", a.device]
    limit = ["--limit", str(a.limit)] if a.limit else []
    n_train = a.limit or 60000
    steps_per_epoch = math.ceil(n_train / 128)

    if a.runs:
        res = work / "results"
        common = ["--n-eval", str(a.n_eval), "--large-eps", "0", *dev, "--batch-size", str(a.eval_batch),
                  "--results-dir", str(res)]
        jobs = {}
        for r in a.runs:
            name = Path(r).name
            jobs[name + "_sweep"] = [featlab_cmd("eval", "--run", r, *EVALS[0], *common)]
            jobs[name + "_aa"] = [featlab_cmd("eval", "--run", r, *EVALS[1], *common)]
            jobs[name + "_beyond"] = [featlab_cmd("eval", "--run", r, *e, *common) for e in EVALS[2:]]
        rc = run_parallel(jobs, timeout=max(10.0, left(a.deadline_s) - 20), logdir=work / "logs")
        emit(out, {"step": "eval", "rc": rc})
        return finish(a, out, work, res)

    # 1. calibration: 2 epochs of 30 steps each, all four methods at once
    cal = {k: [featlab_cmd("train", *COMMON, *v, *dev, "--limit", str(128 * a.cal_steps), "--epochs", "2", "--eval-n", "100",
                           "--out", str(work / "cal" / k))] for k, v in METHODS.items()}
    rc = run_parallel(cal, timeout=min(120.0, left(a.deadline_s) - 60), logdir=work / "logs")
    plan = {}
    for k in METHODS:
        hist = json.loads((work / "cal" / k / "history.json").read_text())["history"] if rc.get(k) == 0 else []
        if len(hist) < 2:
            emit(out, {"step": "calibration", "method": k, "rc": rc.get(k), "error": "no history"})
            continue
        s_step = hist[1]["time_s"] / a.cal_steps
        epochs = int(max(1, min(a.max_epochs, a.train_budget_s / (s_step * steps_per_epoch * 1.05))))
        plan[k] = epochs
        emit(out, {"step": "calibration", "method": k, "s_per_step": round(s_step, 4), "epochs": epochs})

    # 2. the runs, at once; the reference schedule (100 epochs, drops at 50 and 80) scaled to the epochs
    runs = {}
    for k, epochs in plan.items():
        ms = sorted({m for m in (round(0.5 * epochs), round(0.8 * epochs)) if 0 < m < epochs})
        runs[k] = [featlab_cmd("train", *COMMON, *METHODS[k], *dev, *limit, "--epochs", str(epochs),
                               *(["--milestones", *map(str, ms)] if ms else []), "--out", str(work / "runs" / f"mnist_resnet_{k}_gpu"))]
    t = time.monotonic()
    rc = run_parallel(runs, timeout=min(a.train_budget_s * 1.4, left(a.deadline_s) - 150), logdir=work / "logs")
    for k in runs:
        hist_p = work / "runs" / f"mnist_resnet_{k}_gpu" / "history.json"
        hist = json.loads(hist_p.read_text())["history"] if hist_p.exists() else []
        emit(out, {"step": "train", "method": k, "rc": rc.get(k), "epochs_planned": plan[k], "epochs_done": len(hist),
                   "wall_s": round(time.monotonic() - t, 1), "last": hist[-1] if hist else None})

    # 3. evaluation and the probe, one job per run, the four at once
    res = work / "results"
    jobs = {}
    for k in runs:
        run = str(work / "runs" / f"mnist_resnet_{k}_gpu")
        if not (work / "runs" / f"mnist_resnet_{k}_gpu" / "checkpoint.pt").exists():
            continue
        cmds = [featlab_cmd("eval", "--run", run, *e, "--n-eval", str(a.n_eval), "--large-eps", "0", *dev,
                            "--results-dir", str(res)) for e in EVALS]
        cmds.append(featlab_cmd("separability", "--run", run, *dev, "--results-dir", str(res / "probes")))
        jobs[k] = cmds
    rc = run_parallel(jobs, timeout=max(10.0, left(a.deadline_s) - 25), logdir=work / "logs")
    emit(out, {"step": "eval", "rc": rc})

    return finish(a, out, work, res)


def finish(a: argparse.Namespace, out: Path, work: Path, res: Path) -> int:
    """Records: fill in the commit of the tree sent here; then one archive of everything."""
    for f in list(res.rglob("*.json")):
        recs = json.loads(f.read_text())
        for r in recs if isinstance(recs, list) else [recs]:
            if a.commit and r.get("commit") != a.commit:
                # git there reads whatever .git the device copy holds (possibly a stale one): the tree
                # sent is the authority
                r["commit_as_seen_on_device"], r["commit"] = r.get("commit"), a.commit
            emit(out, {"step": "record", "file": f.name, "clean": r.get("clean_acc"), "robust": r.get("robust_acc"),
                       "wall_s": r.get("wall_s")})
        f.write_text(json.dumps(recs, indent=2) + "\n")
    for ck in (work / "cal").rglob("checkpoint.pt"):
        ck.unlink()
    with tarfile.open(out / "gpu_mnist.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu_mnist")
    emit(out, {"step": "done"})
    return 0

if __name__ == "__main__":
    sys.exit(main())
