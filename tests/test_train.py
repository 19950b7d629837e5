import json
import os
import subprocess
import sys

import pytest
import torch

import featlab
from featlab import checkpoint as ckpt
from featlab.train import PGDAT, Standard, Trainer, create_objective
from conftest import tiny_model


def _toy(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) * 3).long().clamp(0, 2)   # learnable labels
    return x, y


def _trainer(tmp_path=None, epochs=3, objective=None, name="ck.pt"):
    m = tiny_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return Trainer(m, objective or PGDAT(eps=0.1, steps=2), epochs=epochs, batch_size=32, optimizer=opt,
                   scheduler=sched, device="cpu", progress=False, seed=7,
                   checkpoint=str(tmp_path / name) if tmp_path else None,
                   eval_attack=lambda mm: featlab.attacks.PGD(mm, eps=0.1, steps=2))


def test_device_is_cpu_here_and_validated():
    assert featlab.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert featlab.get_device().type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            featlab.get_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        featlab.get_device("tpu9")


def test_same_seed_same_numbers():
    x, y = _toy()
    runs = []
    for _ in range(2):
        featlab.seed_everything(5)
        t = _trainer(epochs=2)
        runs.append((t.fit(x, y, eval_data=(x, y)), t.model.state_dict()))
    timeless = [[{k: v for k, v in h.items() if k != "time_s"} for h in r[0]] for r in runs]
    assert timeless[0] == timeless[1]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_resume_matches_uninterrupted_run(tmp_path):
    x, y = _toy()
    featlab.seed_everything(1)
    full = _trainer(tmp_path, name="full.pt")
    h_full = full.fit(x, y, eval_data=(x, y))

    featlab.seed_everything(1)
    part = _trainer(tmp_path, name="part.pt")
    part.fit(x, y, eval_data=(x, y), stop_after=1)            # "interrupted" after epoch 1
    resumed = _trainer(tmp_path, name="part.pt")              # a new process picks up the file...
    torch.manual_seed(12345)                                  # ...with its RNG somewhere else
    h_res = resumed.fit(x, y, eval_data=(x, y))
    assert len(h_res) == 3 and resumed.start_epoch == 3
    assert [h["loss"] for h in h_res] == [h["loss"] for h in h_full]
    assert [h["robust_acc"] for h in h_res] == [h["robust_acc"] for h in h_full]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")], "temp files left behind"


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    x, y = _toy()
    _trainer(tmp_path, epochs=1).fit(x, y)
    other = _trainer(tmp_path, epochs=1, objective=PGDAT(eps=0.2, steps=2))
    with pytest.raises(ckpt.CheckpointError, match="belongs to another run"):
        other.fit(x, y)


def test_history_has_per_epoch_metrics():
    x, y = _toy()
    h = _trainer(epochs=2).fit(x, y, eval_data=(x, y))
    assert [r["epoch"] for r in h] == [1, 2]
    assert {"loss", "train_acc", "clean_acc", "robust_acc", "lr", "time_s", "eps"} <= set(h[0])
    assert h[1]["lr"] == pytest.approx(h[0]["lr"] / 2)


def test_pgd_at_eps_ramp():
    o = PGDAT(eps=0.3, eps_start=0.1, ramp_epochs=2)
    o.on_epoch_start(0, 5)
    assert o.current_eps == pytest.approx(0.2)
    o.on_epoch_start(3, 5)
    assert o.current_eps == pytest.approx(0.3)


def test_standard_training_learns_real_mnist(mnist_small, trained_mnist):
    _, _, xt, yt = mnist_small
    assert featlab.metrics.accuracy(trained_mnist, xt, yt) > 95.0   # one epoch on 10k images


def test_bad_trainer_arguments():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        Trainer(tiny_model(), epochs=0)
    with pytest.raises(ValueError, match="unknown objective 'adv'"):
        create_objective("adv")
    with pytest.raises(ValueError, match="x contains NaN"):
        Trainer(tiny_model(), device="cpu", progress=False).fit(torch.full((4, 1, 8, 8), float("nan")),
                                                                 torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_atomic(tmp_path):
    m = tiny_model()
    p = ckpt.save({"model": m.state_dict(), "epoch": 3, "note": "x"}, tmp_path / "a" / "m.pt")
    state = ckpt.load(p)
    assert state["epoch"] == 3
    m2 = tiny_model()
    torch.nn.init.zeros_(m2.head.weight)
    ckpt.load_model_weights(m2, p)
    assert torch.equal(m2.head.weight, m.head.weight)
    assert os.listdir(tmp_path / "a") == ["m.pt"]


def test_a_flipped_bit_never_changes_what_loads(tmp_path):
    """Every single-bit flip of a saved checkpoint is refused, or loads exactly the saved content
    (flips in bytes that torch's zip reader ignores, such as padding): never other numbers."""
    state = {"model": {"w": torch.randn(200, generator=torch.Generator().manual_seed(0))}, "epoch": 3}
    raw = ckpt.save(state, tmp_path / "m.pt").read_bytes()
    refused = 0
    for pos in range(0, len(raw), 3):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << (pos % 8)
        (tmp_path / "f.pt").write_bytes(bytes(flipped))
        try:
            got = ckpt.load(tmp_path / "f.pt")
        except ckpt.CheckpointError:
            refused += 1
            continue
        assert torch.equal(got["model"]["w"], state["model"]["w"]) and got["epoch"] == 3, f"byte {pos}"
    assert refused > len(raw) // 3 // 2          # most flips are caught (the payload is the bulk of the file)


def test_checkpoint_mode_follows_umask_and_stale_tmp_files_are_swept(tmp_path):
    old = os.umask(0o022)
    try:
        p = ckpt.save({"a": torch.zeros(2)}, tmp_path / "m.pt")
        assert (p.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
    # a writer killed with SIGKILL between its temporary file and the rename
    code = ("import os, featlab.checkpoint as c, torch\n"
            "c.os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
            f"c.save({{'a': torch.zeros(2)}}, {str(tmp_path / 'k.pt')!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert [f.name for f in tmp_path.glob(".k.pt.*.tmp")], "the killed save left no temporary file to sweep"
    ckpt.save({"a": torch.ones(2)}, tmp_path / "k.pt")
    assert not list(tmp_path.glob(".k.pt.*.tmp"))
    assert torch.equal(ckpt.load(tmp_path / "k.pt")["a"], torch.ones(2))


def test_checkpoints_written_before_checksums_still_load(tmp_path):
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "old.pt")
    assert torch.equal(ckpt.load(tmp_path / "old.pt")["model"]["w"], torch.ones(3))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_checkpoint_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": _Payload()}, bad)
    with pytest.raises(ckpt.CheckpointError, match="path: .*refused"):
        ckpt.load(bad)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_truncated_and_tampered_checkpoints(tmp_path):
    m = tiny_model()
    p = ckpt.save({"model": m.state_dict()}, tmp_path / "m.pt")
    raw = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
        ckpt.load(tmp_path / "trunc.pt")
    (tmp_path / "html.pt").write_text("<html>quota exceeded</html>")
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
        ckpt.load(tmp_path / "html.pt")
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_model_weights(m, p, expected_sha256="0" * 64)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint file"):
        ckpt.load(tmp_path / "missing.pt")
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_model_weights(featlab.models.create("mnist_cnn"), p)


_SEEDED_CALLS = r'''
import hashlib, json, os, sys
import torch
import featlab
from featlab.attacks import PGD
from featlab.defenses import embedding_separability

def scramble():                       # each call must be reproducible by itself, whatever ran before
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))

def digest(t):
    return hashlib.sha256(t.detach().double().numpy().tobytes()).hexdigest()[:16]

g = torch.Generator().manual_seed(0)
x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
out = {}
scramble()
model, hist = featlab.train.train_classifier("mnist_cnn", x, y, "pgd_at", epochs=1, batch_size=32, seed=7,
                                             progress=False, device="cpu", eps=0.1, steps=2)
out["train_classifier"] = digest(torch.cat([p.flatten() for p in model.parameters()]))
scramble()
out["robust_correct"] = digest(featlab.metrics.robust_correct(model, x, y, PGD(model, eps=0.1, steps=3), progress=False,
                                                              seed=3).double())
scramble()
res = featlab.probe.sweep({"m": model}, x[:16], y[:16], [0.1], attack_steps=2, seed=4)
out["probe.sweep"] = repr({s: {k: round(v, 6) for k, v in d.mean("linf").items()} if hasattr(d, "mean") else str(d)
                           for s, d in res["m"][0.1].items()})
scramble()
sep = embedding_separability(model, x, y, PGD(model, eps=0.1, steps=2), steps=20, seed=5)
out["embedding_separability"] = repr(sorted((k, round(float(v), 6)) for k, v in sep.items()
                                            if isinstance(v, (int, float))))
print(json.dumps(out))
'''


def test_every_seeded_call_repeats_in_a_fresh_process(tmp_path):
    """train_classifier (the model is built after seeding), robust_correct, probe.sweep and the
    separability probe: same seed, same numbers in two fresh processes whose global RNG differs."""
    script = tmp_path / "seeded.py"
    script.write_text(_SEEDED_CALLS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    for p in outs:
        assert p.returncode == 0, p.stderr[-2000:]
    first, second = (json.loads(p.stdout.strip().splitlines()[-1]) for p in outs)
    assert set(first) == {"train_classifier", "robust_correct", "probe.sweep", "embedding_separability"}
    assert first == second


def test_pgd_at_with_apgd_ce_trains_inside_the_ball_and_leaves_the_rng_alone():
    """PGD-AT against the AFD code's training attack: x_adv inside the eps ball and [0, 1], the global
    RNG untouched (torchattacks reseeds it on every call), the model's mode given back."""
    pytest.importorskip("torchattacks")
    m = tiny_model()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    obj = PGDAT(eps=0.1, steps=3, attack="apgd-ce")
    assert obj.config()["attack"] == "apgd-ce" and "attack" not in PGDAT(eps=0.1).config()   # old runs resume
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    m.train()
    from featlab.attacks.apgd import apgd_ce_examples
    x_adv = apgd_ce_examples(m, x, y, 0.1, 3)
    assert torch.equal(torch.rand(3), expected), "the attack moved the global RNG"
    assert m.training and (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    loss, logits, logs = obj.loss(m, x, y)
    assert loss.requires_grad and logits.shape == (8, 3) and logs["eps"] == 0.1
    with pytest.raises(ValueError, match="attack: 'apgd-ce' trains in Linf only"):
        PGDAT(eps=0.5, attack="apgd-ce", norm="l2")


def test_triangle_schedule_per_step_and_resumable(tmp_path):
    from featlab.train import Triangle, triangle_schedule
    tri = Triangle(total_steps=10, warmup_steps=4)
    assert [round(tri(s), 3) for s in (0, 2, 4, 7, 10, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="warmup_steps"):
        Triangle(total_steps=10, warmup_steps=11)
    x, y = _toy()

    def trainer(name):
        featlab.seed_everything(1)
        m = tiny_model()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        steps_per_epoch = -(-len(x) // 32)
        return Trainer(m, Standard(label_smoothing=0.1), epochs=3, batch_size=32, optimizer=opt,
                       scheduler=triangle_schedule(opt, 3 * steps_per_epoch, steps_per_epoch),
                       scheduler_interval="step", device="cpu", progress=False, seed=7, checkpoint=str(tmp_path / name))
    full = trainer("full.pt")
    h = full.fit(x, y)
    # stepped after every batch: the warm-up (one epoch) peaks at the end of epoch 1, then decays to 0
    assert [r["lr"] for r in h] == pytest.approx([0.1, 0.05, 0.0])
    part = trainer("part.pt")
    part.fit(x, y, stop_after=1)
    resumed = trainer("part.pt")
    h_res = resumed.fit(x, y)
    assert [r["loss"] for r in h_res] == [r["loss"] for r in h], "a resumed per-step schedule continues exactly"
    with pytest.raises(ValueError, match="scheduler_interval"):
        Trainer(tiny_model(), scheduler_interval="batch", device="cpu")


def test_label_smoothing_is_the_objectives_and_checked():
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    model = lambda x: logits  # noqa: E731
    plain, _, _ = Standard().loss(model, None, torch.tensor([0]))
    smooth, _, _ = Standard(label_smoothing=0.3).loss(model, None, torch.tensor([0]))
    assert smooth > plain, "smoothing penalises a confident correct prediction"
    assert Standard(label_smoothing=0.3).config() == {"name": "standard", "label_smoothing": 0.3}
    assert Standard().config() == {"name": "standard"}
    with pytest.raises(ValueError, match="label_smoothing"):
        Standard(label_smoothing=-0.1)


def test_progress_bars_show_in_a_live_session_and_not_in_an_unattended_notebook_run(monkeypatch, capsys):
    """An executed notebook keeps a bar's frames as its output: under the runner (FEATLAB_NOTEBOOK_RUN=1) the
    training loop and the robust-accuracy loop draw none unless asked; elsewhere they do."""
    from featlab._utils import show_progress

    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 3
    model = tiny_model()
    attack = featlab.attacks.PGD(model, eps=0.1, steps=2)
    for unattended, drawn in (("1", False), ("0", True)):
        monkeypatch.setenv("FEATLAB_NOTEBOOK_RUN", unattended)
        assert show_progress(None) is drawn and show_progress(True) and not show_progress(False)
        Trainer(model, epochs=1, batch_size=20, device="cpu").fit(x, y)
        featlab.metrics.robust_accuracy(model, x, y, attack, batch_size=20)
        err = capsys.readouterr().err
        assert ("epoch 1/1" in err and "robust acc" in err) is drawn, err[-300:]
