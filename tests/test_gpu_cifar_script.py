"""bench/gpu_cifar.py (the CIFAR-10 GPU run of issues 19 and 32) without a GPU: its budget arithmetic against
the H200 run's measured numbers, the plan of one 600 s call for AFD and PGD-AT, the compressed reference
schedule, AutoAttack sized to the time left, the model it trains, the message of a machine without CUDA,
and (slow) the whole ``--smoke`` dry run on this CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import featlab
from conftest import needs_cifar10

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_cifar  # noqa: E402

# the H200 run (bench/results/gpu_cifar_h200*): PGD-5 AT, batch 512, 1,000 eval images, 85 s budget;
# 0.0514 s a step; its 14 epochs took 82.8 s in the loop (5.91 s each) and 89.7 s for the whole train call
H200_STEP_S, H200_EPOCH_S, H200_START_S = 0.0514, 82.8 / 14, 89.7 - 82.8


def test_epochs_fit_the_budget_the_h200_run_measured():
    epochs, epoch_s = gpu_cifar.epochs_for_budget(H200_STEP_S, 50000, 512, 5 + 2, 1000, 85.0, 15)
    assert epochs == 13 and 5.9 < epoch_s < 6.0
    # what the card really took for 13 epochs fits the 85 s; the old arithmetic (10% margin, no start-up)
    # planned 14, which took 89.7 s
    assert H200_START_S + epochs * H200_EPOCH_S <= 85.0 < H200_START_S + (epochs + 1) * H200_EPOCH_S
    assert gpu_cifar.epochs_for_budget(H200_STEP_S, 50000, 512, 7, 1000, 85.0, 15, start_s=0.0, margin=1.1)[0] == 14
    assert gpu_cifar.epochs_for_budget(H200_STEP_S, 50000, 512, 7, 1000, 10_000.0, 15)[0] == 15     # capped
    assert gpu_cifar.epochs_for_budget(10.0, 50000, 512, 7, 1000, 1.0, 15)[0] == 1                  # at least one
    with pytest.raises(ValueError, match="budget_s"):
        gpu_cifar.epochs_for_budget(0.05, 50000, 512, 7, 1000, 0.0, 15)
    with pytest.raises(ValueError, match="passes_per_step"):
        gpu_cifar.epochs_for_budget(0.05, 50000, 512, 0, 1000, 85.0, 15)


def test_two_methods_fit_one_600s_call():
    """The docstring's plan with its assumed step times at batch 128 (PGD-10: AFD 0.045 s, PGD-AT 0.036 s):
    AFD 7 epochs (151 s), PGD-AT 8 in no more time than AFD took, two AutoAttacks of 1,000 images, all by 585 s."""
    steps, batch, n_eval, budget = 10, 128, 1000, 160.0
    assumed_step_s = {"afd": 0.045, "pgd_at": 0.036}
    assert [gpu_cifar.RECIPES[m].passes_per_step(steps) for m in ("afd", "pgd_at")] == [13, 12]
    plan, first_wall = {}, None
    for method in ("afd", "pgd_at"):
        b = gpu_cifar.plan_budgets(["afd", "pgd_at"], budget, first_wall)[method]
        epochs, epoch_s = gpu_cifar.epochs_for_budget(assumed_step_s[method], 50000, batch,
                                                      gpu_cifar.RECIPES[method].passes_per_step(steps), n_eval, b, 300)
        wall = gpu_cifar.START_S + epochs * epoch_s          # what the plan expects the train call to take
        assert wall <= b
        plan[method] = (epochs, round(epoch_s, 1), gpu_cifar.compressed_milestones(epochs))
        first_wall = wall if first_wall is None else first_wall
    assert plan == {"afd": (7, 20.6, [4, 6]), "pgd_at": (8, 16.5, [4, 7])}
    budgets = gpu_cifar.plan_budgets(["afd", "pgd_at"], budget, first_wall)
    assert budgets == {"afd": budget, "pgd_at": first_wall} and first_wall < budget   # PGD-AT: AFD's time, no more
    start, probes, pack, pgd20, aa = 10, 8 + 4, 2, 6, 1000 * 0.1
    total = start + probes + budget + first_wall + 4 * pack + 2 * pgd20 + 2 * aa
    assert total <= 585 < 600
    # AutoAttack sized to the time left: with the plan's 2 x 160 s of training, both get all 1,000 images
    left = 585 - (start + probes + 2 * budget + 2 * pack + 2 * pgd20)
    assert gpu_cifar.aa_images_that_fit(n_eval, left, 0.1) == 1000
    assert gpu_cifar.aa_images_that_fit(n_eval, left - 100 - pack, 0.1) == 1000


def test_the_reference_schedule_compressed():
    assert gpu_cifar.compressed_milestones(300) == [150, 250]         # the reference itself
    assert gpu_cifar.compressed_milestones(12) == [6, 10]
    assert gpu_cifar.compressed_milestones(8) == [4, 7]
    assert gpu_cifar.compressed_milestones(7) == [4, 6]               # 3.5 and 5.83, rounded half up
    assert gpu_cifar.compressed_milestones(3) == [2]                  # a drop after the last epoch never acts
    assert gpu_cifar.compressed_milestones(1) == []
    with pytest.raises(ValueError, match="epochs"):
        gpu_cifar.compressed_milestones(0)


def test_autoattack_takes_the_images_that_fit():
    assert gpu_cifar.aa_images_that_fit(1000, 150.0, 0.1) == 1000
    assert gpu_cifar.aa_images_that_fit(1000, 79.0, 0.1) == 700        # whole hundreds
    assert gpu_cifar.aa_images_that_fit(20, 10.0, 0.1) == 20
    assert gpu_cifar.aa_images_that_fit(1000, 50.0, 1.0) == 0           # not even 100
    with pytest.raises(ValueError, match="s_per_image"):
        gpu_cifar.aa_images_that_fit(1000, 50.0, 0.0)


def test_the_first_method_sets_the_time_of_the_others():
    assert gpu_cifar.plan_budgets(["afd", "pgd_at"], 160.0, None) == {"afd": 160.0, "pgd_at": 160.0}
    assert gpu_cifar.plan_budgets(["afd", "pgd_at"], 160.0, 151.5) == {"afd": 160.0, "pgd_at": 151.5}
    assert gpu_cifar.plan_budgets(["afd", "pgd_at"], 160.0, 170.0) == {"afd": 160.0, "pgd_at": 160.0}   # never more


def test_resnet18_l2_is_resnet18_with_a_unit_embedding():
    m = featlab.models.create("resnet18_l2").eval()
    x = torch.rand(3, 3, 32, 32)
    e = m.embed(x)
    assert e.shape == (3, 512) and m.embedding_dim == 512
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert isinstance(m.head, torch.nn.Linear)                     # a plain linear head: logits = W e + b
    assert torch.allclose(m(x), e @ m.head.weight.T + m.head.bias, atol=1e-5)
    plain = featlab.models.create("resnet18").eval()
    assert list(m.state_dict()) == list(plain.state_dict())        # the same weights, key for key
    plain.load_state_dict(m.state_dict())
    f = plain.features(x, layers=["pool"])["pool"]
    assert torch.allclose(e, f / f.norm(dim=1, keepdim=True), atol=1e-5)


def test_a_failed_stage_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    calls = []

    def broken_train(a, method, *rest):
        calls.append(method)
        raise RuntimeError(f"CUDA out of memory ({method})")
    monkeypatch.setattr(gpu_cifar, "train_run", broken_train)
    assert gpu_cifar.main(["--smoke", "--out", str(tmp_path)]) == 1
    assert calls == ["afd", "pgd_at"]                     # AFD's failure did not stop PGD-AT
    lines = [json.loads(s) for s in (tmp_path / "gpu_cifar.jsonl").read_text().splitlines()]
    assert [(r["check"], r.get("method"), r.get("error")) for r in lines[1:]] == [
        ("train", "afd", "RuntimeError: CUDA out of memory (afd)"),
        ("train", "pgd_at", "RuntimeError: CUDA out of memory (pgd_at)")]    # nothing to evaluate: no eval stage
    assert "broken_train" in lines[1]["traceback"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_cifar.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stdout and "--smoke" in p.stdout
    assert not list(tmp_path.iterdir())          # nothing ran, nothing written


@pytest.mark.slow
@needs_cifar10
def test_smoke_runs_every_stage_and_returns_what_it_promises(tmp_path):
    """The CPU dry run (2-3 minutes on the lab's 2 cores): every stage's line, the files the device tool
    returns (at most 8, each under 16 MiB), and fp16 weights that load back into the model they came from."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_cifar.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(s) for s in (tmp_path / "gpu_cifar.jsonl").read_text().splitlines()]
    assert [(r["check"], r.get("method")) for r in lines] == [
        ("device", None), ("probe", "afd"), ("train", "afd"), ("eval pgd20", "afd"),
        ("probe", "pgd_at"), ("train", "pgd_at"), ("eval pgd20", "pgd_at"),
        ("plan autoattack", "afd"), ("plan autoattack", "pgd_at")]
    by = {(r["check"], r.get("method")): r for r in lines}
    assert by[("train", "pgd_at")]["epochs"] == by[("train", "afd")]["epochs"] == 1
    assert by[("probe", "afd")]["attack"] == by[("probe", "pgd_at")]["attack"] == "pgd2", "the smoke's short attack"
    assert by[("probe", "pgd_at")]["train_budget_s"] == by[("train", "afd")]["wall_s"]     # same time as AFD
    assert "d_acc_epoch_mean" in by[("train", "afd")]["last"]                              # it played the game
    for m in ("afd", "pgd_at"):
        recs = by[("eval pgd20", m)]["records"]
        assert [(r["eps"], r["n_eval"]) for r in recs] == [(8 / 255, 20), (1.0, 20)]
        assert recs[1]["robust_acc"] == 0.0                                   # the whole box: nothing survives
        assert by[("plan autoattack", m)]["n"] == 20
    files = sorted(f.name for f in tmp_path.iterdir() if f.is_file())
    weights = [f"gpu_resnet18_l2_{m}_part{i}.safetensors" for m in ("afd", "pgd_at") for i in (1, 2)]
    assert files == sorted(["gpu_cifar.jsonl", "gpu_cifar_records.tgz", *weights])
    assert all((tmp_path / f).stat().st_size < 16 * 2**20 for f in files)
    with tarfile.open(tmp_path / "gpu_cifar_records.tgz") as tar:
        names = set(tar.getnames())
    runs = {f"runs/gpu_resnet18_l2_{m}/{f}" for m in ("afd", "pgd_at") for f in ("config.json", "history.json")}
    assert runs <= names
    assert sum(n.startswith("results/") for n in names) == 4
    from safetensors.torch import load_file
    state = {**load_file(tmp_path / weights[0]), **load_file(tmp_path / weights[1])}
    model = featlab.models.create("resnet18_l2")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    run = featlab.runs.load(tmp_path / "smoke_runs" / "gpu_resnet18_l2_afd", "cpu")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), run.model.eval()(x), atol=0.05)     # fp16 weights, same logits
