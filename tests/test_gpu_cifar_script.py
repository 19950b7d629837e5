"""bench/gpu_cifar.py (the CIFAR-10 GPU check of issue 19) on a machine without CUDA: it says so and exits 0,
and its epoch budget arithmetic is what the H200 run used."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_cifar  # noqa: E402


def test_epochs_fit_the_budget():
    # the H200 run: 0.0514 s per PGD-5 step of 512 images, 1,000 eval images, 85 s -> 14 epochs of ~5.7 s
    epochs, epoch_s = gpu_cifar.epochs_for_budget(0.0514, 50000, 512, 5, 1000, 85.0, 15)
    assert epochs == 14 and 5.6 < epoch_s < 5.8
    assert epochs * epoch_s <= 85.0 < (epochs + 1) * epoch_s
    assert gpu_cifar.epochs_for_budget(0.0514, 50000, 512, 5, 1000, 10_000.0, 15)[0] == 15     # capped
    assert gpu_cifar.epochs_for_budget(10.0, 50000, 512, 5, 1000, 1.0, 15)[0] == 1             # at least one
    with pytest.raises(ValueError, match="budget_s"):
        gpu_cifar.epochs_for_budget(0.05, 50000, 512, 5, 1000, 0.0, 15)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_cifar.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stdout and "--smoke" in p.stdout
    assert not list(tmp_path.iterdir())          # nothing ran, nothing written
