"""The fast AutoAttack (APGD-CE + APGD-T) on the same images: 2 processes x 1 thread under torchrun
(gloo) against 1 process x 2 threads. Prints one JSON line with both wall times, their ratio and
whether the two robust accuracies are equal (they must be: featlab.metrics deals batches with
their own seeds), and appends it to bench/results/distributed_eval.jsonl.

    python bench/distributed_eval.py [--images 200] [--aa-steps 100] [--batch 50] [--model mnist_cnn_pgd_at]

(The flags avoid prefixes of torchrun's own options, which torchrun would claim: --n, --run.)

Both runs use the same number of cores (2); the ratio says which way of using them is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(a: argparse.Namespace) -> None:
    import torch
    import featlab
    from featlab import distributed
    from featlab.attacks import autoattack
    from featlab.metrics import robust_correct
    distributed.init("cpu")
    model = featlab.pretrained.load(a.model, "cpu")
    x, y = featlab.data.load(featlab.pretrained.info(a.model)["dataset"], "test", limit=a.images)
    distributed.barrier()
    t0 = time.perf_counter()
    ok = robust_correct(model, x, y, autoattack(model, a.eps, version="fast", steps=a.aa_steps), batch_size=a.batch,
                        progress=False)
    wall = time.perf_counter() - t0
    if distributed.is_main():
        print(json.dumps({"robust_acc": 100.0 * ok.float().mean().item(), "eval_s": round(wall, 2),
                          "world_size": distributed.world_size(), "threads": torch.get_num_threads()}))
    distributed.shutdown(clean=True)


def launch(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stdout[-2000:] + p.stderr[-2000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="mnist_cnn_pgd_at")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--aa-steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=50)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    me = [__file__, "--worker", "--model", a.model, "--images", str(a.images), "--eps", str(a.eps),
          "--aa-steps", str(a.aa_steps), "--batch", str(a.batch)]
    one = launch([sys.executable, *me], threads=2)
    two = launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *me],
                 threads=1)
    import torch
    rec = {"bench": "distributed_eval", "model": a.model, "n": a.images, "eps": a.eps, "attack": f"apgd (fast AutoAttack, "
           f"{a.aa_steps} iterations)", "batch": a.batch, "one_process_2_threads": one, "two_processes_1_thread": two,
           "speedup_2x1_over_1x2": round(one["eval_s"] / two["eval_s"], 3),
           "speedup_total": round(one["total_s"] / two["total_s"], 3),
           "same_robust_acc": one["robust_acc"] == two["robust_acc"], "torch": torch.__version__,
           "cpu": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(rec))
    out = ROOT / "bench" / "results" / "distributed_eval.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
