"""featlab under torchrun on CPU: 2 processes with gloo against one process, on the same work.

Every run is a subprocess with one thread (torchrun gives each worker one), so one process and two
compute the same batches with the same kernels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import featlab
from conftest import needs_mnist

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(Path(__file__).with_name("dist_worker.py"))

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              needs_mnist]      # every worker reads real MNIST


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEATLAB_DIST_TIMEOUT": "120"}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def single(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_sharded_eval_equals_single_process_exactly(tmp_path):
    """PGD and the fast AutoAttack (APGD-CE + APGD-T; 25 iterations for CI's time) on 200 images, in
    4 batches dealt to 2 ranks: the gathered per-example correctness is the single process's, bit for bit."""
    ok(torchrun(WORKER, "eval", str(tmp_path / "d.pt")))
    ok(single(WORKER, "eval", str(tmp_path / "s.pt")))
    d, s = torch.load(tmp_path / "d.pt"), torch.load(tmp_path / "s.pt")
    assert (d["world_size"], s["world_size"]) == (2, 1)
    assert len(d["pgd"]) == len(d["apgd"]) == 200
    assert torch.equal(d["pred"], s["pred"])
    assert torch.equal(d["pgd"], s["pgd"]), (d["pgd"].float().mean(), s["pgd"].float().mean())
    assert torch.equal(d["apgd"], s["apgd"]), (d["apgd"].float().mean(), s["apgd"].float().mean())
    # neither all fooled nor none: the equality is not that of two constant vectors
    assert 0 < int(d["apgd"].sum()) < 200 and 0 < int(d["pgd"].sum()) < 200


@pytest.mark.parametrize("method", ["standard", "afd"])
def test_distributed_training_equals_single_process(tmp_path, method):
    """2 epochs of 5 global batches of 128 (64 per rank) against one process on the same batches.

    Standard goes through DDP; the one process computes the gradient of the whole batch of 128, so
    the weights agree to a tolerance (other kernels, another summation order). AFD all-reduces its
    three optimisers' gradients itself, and its game amplifies last-bit differences (on a CPU with
    AMX, kernels for 64 and 128 images gave 1.3e-3 apart after 10 steps), so it compares like with
    like: the one process runs the per-rank parts of 64 (``micro_batch``) and adds their weighted
    gradients, which makes every weight and D's spectral-norm vectors equal bit for bit."""
    ok(torchrun(WORKER, "train", str(tmp_path / "d.pt"), "--method", method))
    ok(single(WORKER, "train", str(tmp_path / "s.pt"), "--method", method))
    d, s = torch.load(tmp_path / "d.pt"), torch.load(tmp_path / "s.pt")
    assert (d["world_size"], s["world_size"]) == (2, 1)
    for k, v in s["model"].items():
        if method == "afd":
            assert torch.equal(d["model"][k], v), (k, (d["model"][k] - v).abs().max())
        else:
            torch.testing.assert_close(d["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"parameter {k}")
    featlab.seed_everything(0)
    init = featlab.models.create("mnist_cnn").state_dict()
    moved = max((s["model"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3, "training did not move the weights: the comparison would be empty"
    for hd, hs in zip(d["history"], s["history"]):
        assert abs(hd["loss"] - hs["loss"]) < 1e-4 and hd["lr"] == hs["lr"]
    if method == "afd":
        for k, v in s["discriminator"].items():
            assert torch.equal(d["discriminator"][k], v), (k, (d["discriminator"][k] - v).abs().max())


def test_resume_under_torchrun(tmp_path):
    """Interrupted after epoch 1 and resumed under torchrun = trained straight through under torchrun."""
    ok(torchrun(WORKER, "train", str(tmp_path / "full.pt"), "--checkpoint", str(tmp_path / "full.ckpt")))
    ok(torchrun(WORKER, "train", str(tmp_path / "half.pt"), "--checkpoint", str(tmp_path / "r.ckpt"),
                "--stop-after", "1"))
    half = torch.load(tmp_path / "half.pt")
    assert len(half["history"]) == 1
    ok(torchrun(WORKER, "train", str(tmp_path / "resumed.pt"), "--checkpoint", str(tmp_path / "r.ckpt")))
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert len(resumed["history"]) == 2
    for k, v in full["model"].items():
        assert torch.equal(resumed["model"][k], v), k


def test_an_evaluation_interrupted_in_one_process_resumes_under_torchrun(tmp_path):
    """Batches kept by one process, two of four lost (the kill): two ranks read back the rest, attack
    the lost ones, and gather the single process's result exactly; the count covers both ranks."""
    d = tmp_path / "partial"
    ok(single(WORKER, "resume", str(tmp_path / "s.pt"), "--resume-dir", str(d)))
    files = sorted(d.rglob("batch*.pt"))
    assert len(files) == 4
    for f in files[1:3]:
        f.unlink()
    ok(torchrun(WORKER, "resume", str(tmp_path / "d.pt"), "--resume-dir", str(d)))
    s, r = torch.load(tmp_path / "s.pt"), torch.load(tmp_path / "d.pt")
    assert (s["world_size"], r["world_size"], s["resumed"], r["resumed"]) == (1, 2, 0, 2)
    assert torch.equal(r["correct"], s["correct"]) and 0 < int(s["correct"].sum()) < 200


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    p = torchrun(WORKER, "fail", str(tmp_path / "never.pt"), timeout=240)
    assert p.returncode != 0
    assert "boom from rank 1" in p.stdout + p.stderr
    assert not (tmp_path / "never.pt").exists()


def test_cli_eval_record_under_torchrun_equals_its_single_process_twin(tmp_path):
    args = ["-m", "featlab.cli", "eval", "--pretrained", "mnist_cnn_pgd_at", "--attacks", "pgd10", "--eps", "0.3",
            "--n-eval", "100", "--batch-size", "25", "--large-eps", "0"]
    ok(torchrun(*args, "--results-dir", str(tmp_path / "d")))
    ok(single(*args, "--results-dir", str(tmp_path / "s")))
    name = "pretrained_mnist_cnn_pgd_at_pgd10_linf_eps0.3_n100.json"
    d, s = (json.loads((tmp_path / w / name).read_text()) for w in ("d", "s"))
    assert (d["world_size"], s["world_size"]) == (2, 1)
    for k in ("clean_acc", "robust_acc", "n_eval", "attack", "eps"):
        assert d[k] == s[k], k
    assert s["robust_acc"] < s["clean_acc"]


def test_cli_rejects_sync_bn_on_cpu(tmp_path):
    p = single("-m", "featlab.cli", "train", "--model", "mnist_cnn", "--epochs", "1", "--limit", "64",
               "--sync-bn", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert p.returncode != 0 and "sync_batchnorm" in p.stderr


@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_cli_train_under_torchrun(tmp_path, method):
    """PGD-AT (attack on the unwrapped model, one DDP forward) and TRADES (two DDP forwards before one
    backward) train under torchrun; rank 0 writes the run folder once; it evaluates."""
    run = tmp_path / "run"
    ok(torchrun("-m", "featlab.cli", "train", "--model", "mnist_cnn", "--method", method, "--epochs", "1",
                "--limit", "256", "--eval-n", "50", "--attack-steps", "2", "--device", "cpu", "--out", str(run)))
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["method"] == method
    history = json.loads((run / "history.json").read_text())["history"]
    assert len(history) == 1 and history[0]["loss"] > 0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "history.json"]
    # the trained run, evaluated under torchrun (--checkpoint: torchrun would take --run for its --run-path)
    # and in one process: the same record
    args = ["-m", "featlab.cli", "eval", "--checkpoint", str(run), "--attacks", "pgd5", "--eps", "0.3",
            "--n-eval", "60", "--batch-size", "20", "--large-eps", "0", "--device", "cpu"]
    ok(torchrun(*args, "--results-dir", str(tmp_path / "d")))
    ok(single(*args, "--results-dir", str(tmp_path / "s")))
    d, s = (json.loads((tmp_path / w / "run_pgd5_linf_eps0.3_n60.json").read_text()) for w in ("d", "s"))
    assert (d["world_size"], s["world_size"]) == (2, 1)
    assert (d["clean_acc"], d["robust_acc"]) == (s["clean_acc"], s["robust_acc"])
