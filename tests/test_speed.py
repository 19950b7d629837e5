"""The fast path (precision and memory format), fp32 evaluation, and the early exit of robust_accuracy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import featlab
from featlab.attacks import BPDA, PGD
from featlab.metrics import robust_accuracy
from featlab.train import PGDAT, TRADES, Standard, Trainer
from conftest import tiny_model


def _toy(n=64):
    """Images whose class is their brightness band (three classes, all present)."""
    g = torch.Generator().manual_seed(0)
    level = torch.rand(n, 1, 1, 1, generator=g)
    x = (level + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, (level.flatten() * 3).long().clamp(0, 2)


class DtypeSpy:
    """Records the dtype of every Conv2d output of a model while it is armed."""

    def __init__(self, model: nn.Module):
        self.seen: list[torch.dtype] = []
        self.armed = True
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(lambda _m, _i, out: self.seen.append(out.dtype) if self.armed else None)


def test_cpu_without_native_bf16_trains_in_fp32_contiguous(monkeypatch):
    monkeypatch.setenv("FEATLAB_CPU_BF16", "0")
    assert not featlab.cpu_has_native_bf16()
    fast = featlab.choose_fast_path("cpu")
    assert fast.describe() == {"precision": "fp32", "memory_format": "contiguous"}
    m = tiny_model()
    spy = DtypeSpy(m)
    t = Trainer(m, Standard(), device="cpu", progress=False)
    t.fit(*_toy())
    assert set(spy.seen) == {torch.float32}
    assert t.fast.describe() == {"precision": "fp32", "memory_format": "contiguous"}


def test_cpu_with_native_bf16_trains_in_bf16_channels_last(monkeypatch):
    monkeypatch.setenv("FEATLAB_CPU_BF16", "1")
    t = Trainer(tiny_model(), PGDAT(eps=0.1, steps=2), device="cpu", progress=False)
    assert t.fast.describe() == {"precision": "bf16-autocast", "memory_format": "channels_last"}
    conv = t.model.encoder.conv[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    spy = DtypeSpy(t.model)
    x, y = _toy()
    spy.armed = True
    t.objective.train_step(t.prepare_batch(x), y)       # the attack and the update both in bf16
    assert set(spy.seen) == {torch.bfloat16}
    # the switches: an explicit fp32, and FEATLAB_FAST=0 for every "auto"
    assert Trainer(tiny_model(), device="cpu", precision="fp32", memory_format="contiguous",
                   progress=False).fast.describe() == {"precision": "fp32", "memory_format": "contiguous"}
    monkeypatch.setenv("FEATLAB_FAST", "0")
    assert featlab.choose_fast_path("cpu").describe() == {"precision": "fp32", "memory_format": "contiguous"}


def test_fast_path_arguments_are_validated(monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of"):
        featlab.choose_fast_path("cpu", precision="fp16")
    with pytest.raises(ValueError, match="memory_format must be one of"):
        Trainer(tiny_model(), device="cpu", memory_format="nhwc")
    monkeypatch.setenv("FEATLAB_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="FEATLAB_CPU_BF16"):
        featlab.cpu_has_native_bf16()


def test_evaluation_stays_fp32_while_training_in_bf16(monkeypatch):
    monkeypatch.setenv("FEATLAB_CPU_BF16", "1")
    m = tiny_model()
    spy = DtypeSpy(m)
    x, y = _toy()
    t = Trainer(m, Standard(), epochs=1, device="cpu", progress=False,
                eval_attack=lambda mm: PGD(mm, eps=0.1, steps=3))
    # the per-epoch evaluation: clean and robust accuracy; arm the spy only while it runs
    orig = featlab.train.loop.robust_accuracy

    def spied(*args, **kwargs):
        spy.seen.clear()
        out = orig(*args, **kwargs)
        assert spy.seen and set(spy.seen) == {torch.float32}
        return out
    monkeypatch.setattr(featlab.train.loop, "robust_accuracy", spied)
    h = t.fit(x, y, eval_data=(x, y))
    assert "robust_acc" in h[-1]
    # an autocast around robust_accuracy is switched off: the same number as without it
    featlab.seed_everything(0)
    plain = robust_accuracy(t.model, x, y, PGD(t.model, eps=0.1, steps=3), progress=False)
    featlab.seed_everything(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spy.seen.clear()
        wrapped = robust_accuracy(t.model, x, y, PGD(t.model, eps=0.1, steps=3), progress=False)
    assert wrapped == plain and set(spy.seen) == {torch.float32}


def test_objective_logs_are_tensors_so_steps_do_not_sync():
    from featlab.train import AFD
    x, y = _toy(32)
    for make in (Standard, lambda: PGDAT(eps=0.1, steps=2), lambda: TRADES(eps=0.1, steps=2)):
        t = Trainer(tiny_model(), make(), device="cpu", progress=False)
        logs = t.objective.train_step(x, y)
        assert all(isinstance(v, torch.Tensor) for k, v in logs.items() if k != "eps"), logs
    m = tiny_model()
    afd = AFD(m, eps=0.1, steps=2, step_size=0.05)
    Trainer(m, afd, optimizer=afd.optimizer_ec, device="cpu", progress=False)
    logs = afd.train_step(x, y)
    assert {"d_acc_clean", "grad_norm_d", "grad_norm_e", "e_adv_loss"} <= set(logs)
    assert all(isinstance(v, torch.Tensor) for v in logs.values()), logs


def test_trainer_schedules_and_checkpoints_every_optimizer_of_the_objective(tmp_path):
    from featlab.train import AFD
    x, y = _toy()

    def run(stop_after=None):
        featlab.seed_everything(3)
        m = tiny_model()
        afd = AFD(m, eps=0.1, steps=2, step_size=0.05, lr_ec=0.1, lr_e=0.4, lr_d=0.2)
        sched = torch.optim.lr_scheduler.MultiStepLR(afd.optimizer_ec, milestones=[1], gamma=0.1)
        t = Trainer(m, afd, epochs=2, batch_size=32, optimizer=afd.optimizer_ec, scheduler=sched, device="cpu",
                    progress=False, checkpoint=str(tmp_path / "afd.pt"), seed=3)
        t.fit(x, y, stop_after=stop_after)
        return t, afd
    t, afd = run(stop_after=1)
    # after the epoch-1 milestone all three learning rates dropped by 10
    assert afd.optimizer_e.param_groups[0]["lr"] == pytest.approx(0.04)
    assert afd.optimizer_d.param_groups[0]["lr"] == pytest.approx(0.02)
    state = featlab.checkpoint.load(tmp_path / "afd.pt")
    assert set(state["objective_optimizers"]) == {"optimizer_e", "optimizer_d"}
    assert state["objective_optimizers"]["optimizer_d"]["state"], "D's momentum buffers must be checkpointed"
    assert set(state["objective_schedulers"]) == {"optimizer_e", "optimizer_d"}
    resumed, afd_r = run()                   # resumes epoch 2 from the checkpoint
    (tmp_path / "afd.pt").unlink()
    full, afd_f = run()
    assert afd_r.optimizer_d.param_groups[0]["lr"] == afd_f.optimizer_d.param_groups[0]["lr"]
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k]), k
    for k, v in afd_f.discriminator.state_dict().items():
        assert torch.allclose(v, afd_r.discriminator.state_dict()[k]), k


def _count_rows(model: nn.Module) -> list[int]:
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _m, inp: rows.append(inp[0].shape[0]))
    return rows


def test_early_exit_gives_the_same_robust_accuracy_with_less_work():
    featlab.seed_everything(0)
    m = tiny_model()
    x, y = _toy(96)
    Trainer(m, Standard(), epochs=10, batch_size=16, device="cpu", precision="fp32", progress=False).fit(x, y)
    rows = _count_rows(m)
    for restarts in (1, 3):
        accs, work = [], []
        for early in (True, False):
            featlab.seed_everything(1)
            rows.clear()
            accs.append(robust_accuracy(m, x, y, PGD(m, eps=0.1, steps=10, restarts=restarts), batch_size=40,
                                        progress=False, early_exit=early))
            work.append(sum(rows))
        assert accs[0] == accs[1]
        assert 0 < accs[0] < 100                     # some examples fall, some hold: the exit matters
        assert work[0] < work[1]


@pytest.mark.slow
def test_early_exit_matches_full_attack_on_a_trained_model(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    x, y = xt[:500], yt[:500]
    rows = _count_rows(trained_mnist)
    res = {}
    for early in (True, False):
        featlab.seed_everything(0)
        rows.clear()
        acc = robust_accuracy(trained_mnist, x, y, PGD(trained_mnist, eps=0.1, steps=20, restarts=2),
                              progress=False, early_exit=early)
        res[early] = (acc, sum(rows))
    assert res[True][0] == res[False][0]
    assert res[True][1] < 0.9 * res[False][1]       # images that fall stop costing gradients
    # BPDA through a defense: the attack's model and the evaluated one compute the same outputs
    from featlab.models import Defended
    from featlab.defenses.squeeze import Quantize
    defended = Defended(Quantize(8), trained_mnist)
    bpda = [robust_accuracy(defended, x, y, BPDA(Quantize(8), trained_mnist, eps=0.1, steps=10), progress=False,
                            early_exit=e) for e in (True, False)]
    assert bpda[0] == bpda[1]


@pytest.mark.slow
def test_bf16_evaluation_would_move_robust_accuracy_so_fp32_is_kept(trained_mnist, mnist_small):
    """What a bf16 evaluation would report, next to the fp32 number featlab reports."""
    _, _, xt, yt = mnist_small
    x, y = xt[:250], yt[:250]          # 250: bf16 autocast is emulated (slow) on a CPU without native bf16
    featlab.seed_everything(0)
    fp32 = robust_accuracy(trained_mnist, x, y, PGD(trained_mnist, eps=0.1, steps=20), progress=False)
    featlab.seed_everything(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):          # what featlab does NOT do
        x_adv = PGD(trained_mnist, eps=0.1, steps=20)(x, y)
        with torch.no_grad():
            pred_bf16 = trained_mnist(x_adv).argmax(1)
            clean_bf16 = trained_mnist(x).argmax(1)
    bf16 = 100.0 * ((pred_bf16 == y) & (clean_bf16 == y)).float().mean().item()
    print(f"PGD-20 eps 0.1 on {len(x)} images: fp32 {fp32:.1f}%, bf16 autocast {bf16:.1f}%")
    assert 20 < fp32 < 95                          # a model whose number a precision change could move
    assert abs(bf16 - fp32) <= 5.0                 # bf16 is close, but not the number featlab reports
    featlab.seed_everything(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert robust_accuracy(trained_mnist, x, y, PGD(trained_mnist, eps=0.1, steps=20), progress=False) == fp32
