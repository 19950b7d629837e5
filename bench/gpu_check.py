"""The GPU check (``make gpu-check``): everything featlab claims about CUDA, in one script of at most
8 minutes on one H100. On a machine without CUDA it says so and exits 0 (CI never depends on it).

1. the tests marked ``gpu`` (tests/test_gpu.py): an AMP step for every objective, channels_last,
   resume with the CUDA RNG, CUDA attacks against CPU on 1,000 images, every notebook at CI parameters
   with DEVICE="cuda";
2. benchmark ratios on CUDA: bench/train_speed.py (AMP + channels_last against fp32) and
   bench/attack_speed.py;
3. MNIST time to robustness: mnist_resnet from scratch with PGD-AT, then AFD, until PGD-40 at eps 0.3
   reaches 90% on 1,000 test images (goal: <= 3 minutes each), each capped at ``--cap-s``.

Every JSON line also goes to ``$OUT/gpu_check.jsonl`` (or ``--out``).

    python bench/gpu_check.py [--out DIR] [--cap-s 180] [--skip-tests] [--skip-notebooks]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "gpu_check.jsonl", "a") as f:
        f.write(line + "\n")


def run(cmd: list[str], timeout: int) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"timed out after {timeout} s: {e.stdout or ''}"
    return rc, time.perf_counter() - t0, text


def time_to_robustness(method: str, cap_s: float) -> dict:
    import featlab
    from featlab.attacks import PGD
    from featlab.train import PGDAT, Trainer
    featlab.seed_everything(0)
    x, y = featlab.data.load("mnist", "train")
    xt, yt = featlab.data.load("mnist", "test", limit=1000)
    model = featlab.models.create("mnist_resnet")
    if method == "afd":
        from featlab.train import AFD
        objective = AFD(model, eps=0.3, steps=10, step_size=0.075)
        opt = objective.optimizer_ec
    else:
        objective = PGDAT(eps=0.3, steps=10, eps_start=0.1, ramp_epochs=2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = Trainer(model, objective, epochs=50, batch_size=256, optimizer=opt, device="cuda", progress=False,
                      eval_attack=lambda m: PGD(m, eps=0.3, steps=40, step_size=0.01))
    t0, history = time.perf_counter(), []
    while time.perf_counter() - t0 < cap_s:
        history = trainer.fit(x, y, eval_data=(xt, yt), stop_after=1)
        if history[-1]["robust_acc"] >= 90.0:
            break
    last = history[-1]
    return {"check": "time_to_robustness", "method": method, "epochs": last["epoch"],
            "wall_s": round(time.perf_counter() - t0, 1), "clean": last["clean_acc"], "pgd40": last["robust_acc"],
            "reached_90": last["robust_acc"] >= 90.0, **trainer.fast.describe()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "build/gpu_check"))
    p.add_argument("--cap-s", type=float, default=180.0)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-notebooks", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}); nothing to check. Run `make gpu-check` on a GPU machine.")
        return 0
    emit(out, {"check": "device", "name": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()})
    failed = []
    if not a.skip_tests:
        select = "gpu" if not a.skip_notebooks else "gpu and not slow"
        rc, wall, text = run([sys.executable, "-m", "pytest", "-q", "-m", select, "tests/test_gpu.py"], 330)
        (out / "pytest_gpu.txt").write_text(text)
        emit(out, {"check": "pytest -m gpu", "rc": rc, "wall_s": round(wall, 1),
                   "summary": text.strip().splitlines()[-1] if text.strip() else ""})
        failed += ["tests"] if rc else []
    for name, cmd in (("train_speed", ["bench/train_speed.py", "--threads", "16", "--attack-steps", "10",
                                       "--repeats", "5"]),
                      ("attack_speed", ["bench/attack_speed.py", "--threads", "16", "--batch", "1000"])):
        rc, wall, text = run([sys.executable] + cmd, 120)
        (out / f"{name}.txt").write_text(text)
        last = text.strip().splitlines()[-1] if text.strip() else "{}"
        emit(out, {"check": name, "rc": rc, "wall_s": round(wall, 1),
                   "result": json.loads(last) if rc == 0 else last})
        failed += [name] if rc else []
    for method in ("pgd_at", "afd"):
        rec = time_to_robustness(method, a.cap_s)
        emit(out, rec)
    print("gpu-check:", "FAILED " + ", ".join(failed) if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
