"""The CUDA path, checked on a GPU (``make gpu-check``); every test here skips without CUDA.

CI never runs these for real (its machines have no GPU); they are what the GPU check runs.
"""
from __future__ import annotations

import pytest
import torch

import featlab
from featlab.train import PGDAT, TRADES, Standard, Trainer
from conftest import needs_mnist, tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")]


def _toy(n=64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    level = torch.rand(n, 1, 1, 1, generator=g)
    x = (level + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, (level.flatten() * 3).long().clamp(0, 2)


def _objectives(model):
    from featlab.train import AFD
    yield "standard", Standard(), None
    yield "pgd_at", PGDAT(eps=0.1, steps=2), None
    yield "trades", TRADES(eps=0.1, steps=2), None
    afd = AFD(model, eps=0.1, steps=2, step_size=0.05)
    yield "afd", afd, afd.optimizer_ec


@pytest.mark.parametrize("which", ["standard", "pgd_at", "trades", "afd"])
def test_amp_step_for_every_objective(which):
    model = tiny_model()
    name, objective, opt = next((n, o, p) for n, o, p in _objectives(model) if n == which)
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    t = Trainer(model, objective, optimizer=opt, device="cuda", progress=False)
    assert t.fast.describe() == {"precision": "bf16-autocast", "memory_format": "channels_last"}
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    x, y = _toy()
    logs = t.objective.train_step(t.prepare_batch(x.cuda()), y.cuda())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
    assert torch.bfloat16 in seen
    assert any(not torch.equal(v, t.model.state_dict()[k]) for k, v in before.items()), "the step changed nothing"


def test_denoiser_amp_step():
    from featlab.train import DenoiserObjective
    from featlab.defenses import FeatureLoss, UNetDenoiser
    clf = tiny_model().cuda().eval()
    den = UNetDenoiser(channels=1, width=4, depth=1)
    obj = DenoiserObjective(clf, FeatureLoss(clf), eps_range=(0.05, 0.1), pgd_steps=2, seed=0)
    t = Trainer(den, obj, device="cuda", progress=False)
    x, y = _toy()
    logs = t.objective.train_step(t.prepare_batch(x.cuda()), y.cuda())
    assert torch.isfinite(torch.as_tensor(logs["loss"]))


def test_channels_last_on_cuda():
    t = Trainer(featlab.models.create("mnist_resnet"), device="cuda", progress=False)
    convs = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_resume_restores_the_cuda_rng(tmp_path):
    x, y = _toy()

    def run(stop_after=None):
        featlab.seed_everything(2)
        t = Trainer(tiny_model(), PGDAT(eps=0.1, steps=2), epochs=2, batch_size=16, device="cuda", progress=False,
                    checkpoint=str(tmp_path / "ck.pt"), seed=2)
        t.fit(x, y, stop_after=stop_after)
        return t
    run(stop_after=1)
    state = featlab.checkpoint.load(tmp_path / "ck.pt")
    assert "cuda_rng" in state
    resumed = run()
    rng_after_resume = torch.cuda.get_rng_state()
    (tmp_path / "ck.pt").unlink()
    full = run()
    assert torch.equal(rng_after_resume, torch.cuda.get_rng_state())
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k]), k


@needs_mnist
def test_attacks_on_cuda_agree_with_cpu():
    x, y = featlab.data.load("mnist", "test", limit=1000)
    accs = {}
    for dev in ("cpu", "cuda"):
        m = featlab.pretrained.load("mnist_resnet_pgd_at", device=dev).eval()
        featlab.seed_everything(0)
        accs[dev] = featlab.metrics.robust_accuracy(m, x, y, featlab.attacks.PGD(m, eps=0.3, steps=20),
                                                     progress=False)
    assert abs(accs["cpu"] - accs["cuda"]) <= 1.0, accs


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_feature_noise.ipynb", "02_feature_loss_denoiser.ipynb", "03_afd.ipynb",
                                  "04_attack_explorer.ipynb", "05_honest_evaluation.ipynb"])
def test_notebook_on_cuda(tmp_path, name):
    from featlab import runner
    from test_notebooks import CHECKS, CI_PARAMETERS
    result = runner.run(runner.NOTEBOOK_DIR / name, tmp_path, {**CI_PARAMETERS[name], "DEVICE": "cuda"},
                           cell_timeout=300, html=False)
    if name in CHECKS:
        CHECKS[name](result["metrics"])
