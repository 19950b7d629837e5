import pytest
import torch

import featlab
from featlab.train import AFD
from featlab.defenses import ProjectionDiscriminator
from featlab.train import TRADES, Trainer


def _snap(module):
    """The module's parameters (the players' moves; BatchNorm running stats are not moves)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    after = dict(module.named_parameters())
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _batch(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_discriminator_accuracy_rises_on_fixed_embeddings():
    featlab.seed_everything(0)
    d = ProjectionDiscriminator(16, 10)
    afd = AFD(featlab.models.create("mnist_resnet"), steps=1, loss="bce", lr_d=0.1)
    afd.discriminator = d
    afd.optimizer_d = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
    h_clean = torch.randn(256, 16)
    h_adv = torch.randn(256, 16) + 0.5            # a shifted distribution D can learn to tell apart
    y = torch.randint(0, 10, (256,))
    first = afd.discriminator_step(h_clean, h_adv, y)
    for _ in range(150):
        last = afd.discriminator_step(h_clean, h_adv, y)
    acc0 = (first["d_acc_clean"] + first["d_acc_adv"]) / 2
    acc1 = (last["d_acc_clean"] + last["d_acc_adv"]) / 2
    assert acc1 > acc0 + 15 and acc1 > 80, (acc0, acc1)
    assert last["d_loss"] < first["d_loss"]


@pytest.mark.parametrize("loss", ["wgan", "bce"])
def test_each_part_of_the_game_moves_only_its_players(loss):
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")
    afd = AFD(model, steps=2, loss=loss)
    x, y = _batch()
    enc, head, disc = model.encoder, model.head, afd.discriminator

    b = (_snap(enc), _snap(head), _snap(disc))
    afd.classifier_step(x, y)
    assert _changed(b[0], enc) and _changed(b[1], head) and not _changed(b[2], disc)

    b = (_snap(enc), _snap(head), _snap(disc))
    with torch.no_grad():
        h_c, h_a = model.embed(x), model.embed((x + 0.1).clamp(0, 1))
    afd.discriminator_step(h_c, h_a, y)
    assert not _changed(b[0], enc) and not _changed(b[1], head) and _changed(b[2], disc)

    b = (_snap(enc), _snap(head), _snap(disc))
    afd.encoder_step((x + 0.1).clamp(0, 1), y)
    changed_enc = _changed(b[0], enc)
    assert any(".weight" in k for k in changed_enc), "E's weights move"
    assert not _changed(b[1], head) and not _changed(b[2], disc)
    assert all(p.requires_grad for p in disc.parameters())


def test_full_step_reports_every_term_and_moves_all_three():
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")
    afd = AFD(model, steps=2)
    b = (_snap(model.encoder), _snap(model.head), _snap(afd.discriminator))
    logs = afd.step(*_batch())
    assert {"ce_clean", "d_loss", "e_adv_loss", "d_acc_clean", "d_acc_adv", "grad_norm_ec", "grad_norm_d",
            "grad_norm_e", "train_adv_acc"} <= set(logs)
    assert _changed(b[0], model.encoder) and _changed(b[1], model.head) and _changed(b[2], afd.discriminator)


def test_afd_in_the_shared_trainer_resumes(tmp_path):
    x, y = _batch(64)
    featlab.seed_everything(0)
    m1 = featlab.models.create("mnist_resnet")
    a1 = AFD(m1, steps=2)
    Trainer(m1, a1, epochs=2, batch_size=32, optimizer=a1.optimizer_ec, device="cpu", progress=False,
            checkpoint=str(tmp_path / "a.pt")).fit(x, y)
    featlab.seed_everything(0)
    m2 = featlab.models.create("mnist_resnet")
    a2 = AFD(m2, steps=2)
    Trainer(m2, a2, epochs=2, batch_size=32, optimizer=a2.optimizer_ec, device="cpu", progress=False,
            checkpoint=str(tmp_path / "b.pt")).fit(x, y, stop_after=1)
    m3 = featlab.models.create("mnist_resnet")
    a3 = AFD(m3, steps=2)
    Trainer(m3, a3, epochs=2, batch_size=32, optimizer=a3.optimizer_ec, device="cpu", progress=False,
            checkpoint=str(tmp_path / "b.pt")).fit(x, y)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k]), k
    for k, v in a1.discriminator.state_dict().items():
        assert torch.equal(v, a3.discriminator.state_dict()[k]), k


def test_afd_bad_arguments():
    m = featlab.models.create("mnist_resnet")
    with pytest.raises(ValueError, match="loss must be one of"):
        AFD(m, loss="hinge")
    with pytest.raises(ValueError, match="attack must be one of"):
        AFD(m, attack="cw")
    with pytest.raises(TypeError, match="featlab model"):
        AFD(torch.nn.Linear(2, 2))


def test_trades_step_and_attack_start():
    featlab.seed_everything(0)
    m = featlab.models.create("mnist_cnn")
    x, y = _batch(16)
    loss, logits, logs = TRADES(eps=0.3, steps=2).loss(m, x, y)
    assert loss.requires_grad and logits.shape == (16, 10)
    # the objective is natural CE + beta * KL(f(x) || f(x_adv)), with beta where it belongs
    assert logs["natural"] == pytest.approx(float(torch.nn.functional.cross_entropy(m(x), y)), rel=1e-5)
    assert float(loss) == pytest.approx(float(logs["natural"] + 6.0 * logs["robust_kl"]), rel=1e-5)
    assert logs["robust_kl"] > 1e-4                      # the attack found a direction that moves the output
    loss2, _, logs2 = TRADES(eps=0.3, steps=2, beta=1.0).loss(m, x, y)
    assert float(loss2) == pytest.approx(float(logs2["natural"] + logs2["robust_kl"]), rel=1e-5)
    _, _, logs0 = TRADES(eps=0.0, steps=2).loss(m, x, y)   # eps 0: x_adv = x, nothing to be robust to
    assert float(logs0["robust_kl"]) < 1e-6 < float(logs["robust_kl"])
    x_adv = featlab.attacks.PGD(m, eps=0.1, steps=0 + 1, random_start=0.001)(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_wgan_losses_have_the_papers_signs():
    afd = AFD(featlab.models.create("mnist_resnet"), steps=1)
    s_clean, s_adv = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 0.0])
    d_loss, e_loss = afd.discriminator_losses(s_clean, s_adv)
    assert d_loss.item() == pytest.approx(-0.5 - 3.0)     # mean D(adv) - mean D(clean): D wants clean high
    assert e_loss.item() == pytest.approx(0.5)            # -mean D(adv): E wants its adversarial scores high


@pytest.mark.parametrize("loss", ["wgan", "bce"])
def test_discriminator_learns_to_score_clean_above_adversarial(loss):
    """A sign flip in D's loss would push the score gap negative, and D's accuracy below chance."""
    featlab.seed_everything(0)
    afd = AFD(featlab.models.create("mnist_resnet"), steps=1, loss=loss, lr_d=0.05)
    afd.discriminator = ProjectionDiscriminator(16, 10)
    afd.optimizer_d = torch.optim.SGD(afd.discriminator.parameters(), lr=0.05, momentum=0.9)
    h_clean, h_adv = torch.randn(256, 16), torch.randn(256, 16) + 0.5
    y = torch.randint(0, 10, (256,))
    for _ in range(150):
        last = afd.discriminator_step(h_clean, h_adv, y)
    assert last["d_score_gap"] > 0
    assert (last["d_acc_clean"] + last["d_acc_adv"]) / 2 > 75


def test_discriminator_is_the_reference_snpdfc3():
    d = ProjectionDiscriminator(64, 10)
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 64), (64, 64), (64, 1)]
    assert all(hasattr(m, "parametrizations") for m in linears + [d.embed]), "every map is spectral-normalised"


def test_apgd_training_attack_leaves_the_global_rng_alone():
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")
    afd = AFD(model, steps=3, attack="apgd-ce")
    x, y = _batch(8)
    state = torch.get_rng_state()
    x_adv = afd.make_adversarial(x, y)
    assert torch.equal(state, torch.get_rng_state()), "torchattacks reseeded torch's global RNG"
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6


def test_a_discriminator_at_chance_for_a_whole_epoch_is_reported():
    from featlab.train import AFDGameWarning
    featlab.seed_everything(0)
    m = featlab.models.create("mnist_resnet")
    afd = AFD(m, steps=1, lr_d=1e-12)                 # D cannot move: it stays at chance
    afd.chance_band = 101.0                          # every step counts as "at chance" on 64 images
    x, y = _batch(64)
    with pytest.warns(AFDGameWarning, match="sat at chance for the whole epoch"):
        h = Trainer(m, afd, epochs=1, batch_size=32, optimizer=afd.optimizer_ec, device="cpu",
                    progress=False).fit(x, y)
    assert {"d_acc_epoch_mean", "d_acc_epoch_best", "input_grad_norm"} <= set(h[-1])
    # each step logs D's balanced accuracy (the mean of its two accuracies), and the epoch's mean is theirs
    logs = afd.train_step(x[:32], y[:32])
    assert float(logs["d_acc"]) == pytest.approx(float(logs["d_acc_clean"] + logs["d_acc_adv"]) / 2)
    assert h[-1]["d_acc_epoch_mean"] == pytest.approx(h[-1]["d_acc"], abs=1e-4)


def test_reference_mnist_encoder_has_two_blocks_per_stage():
    ref, small = featlab.models.create("mnist_resnet18"), featlab.models.create("mnist_resnet")
    assert len(ref.encoder.layer2) == 2 and ref.embed(torch.rand(2, 1, 28, 28)).shape == (2, 64)
    assert sum(p.numel() for p in ref.parameters()) > 1.8 * sum(p.numel() for p in small.parameters())


def test_separability_probe_tells_shifted_embeddings_from_identical_ones():
    from featlab.defenses import embedding_separability
    from conftest import tiny_model
    featlab.seed_everything(0)
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g) * 0.5
    y = torch.randint(0, 3, (256,), generator=g)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    same = embedding_separability(m, x, y, lambda xb, yb: xb.clone(), steps=200)
    moved = embedding_separability(m, x, y, lambda xb, yb: (xb + 0.4).clamp(0, 1), steps=200)
    assert 40 <= same["holdout_acc"] <= 60, same          # nothing to tell apart: chance
    assert moved["holdout_acc"] > 90 and moved["holdout_gap"] > 0, moved
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()), "model untouched"
    with pytest.raises(ValueError, match="holdout must be"):
        embedding_separability(m, x, y, lambda xb, yb: xb, holdout=0.0)


def test_the_ablation_switches_off_only_the_encoders_update_against_d():
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")
    afd = AFD(model, steps=2, game=False)
    x, y = _batch()
    calls = []
    afd.encoder_step = lambda *a, **k: calls.append(1) or {}
    b = _snap(afd.discriminator)
    logs = afd.step(x, y)
    assert not calls and "e_adv_loss" not in logs and _changed(b, afd.discriminator), "D still learns"
    assert afd.config()["game"] is False
    with pytest.raises(TypeError, match="game must be"):
        AFD(model, game="off")


def test_micro_batches_give_the_whole_batch_update():
    """AFD with micro_batch (gradient accumulation) makes the update of the whole batch: parts of 8, 8
    and 4 images weighted by their share give the same weights as one batch of 20, to float rounding."""
    from conftest import tiny_model
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 3, (20,))
    states = []
    for micro in (None, 8):
        featlab.seed_everything(0)
        model = tiny_model()
        afd = AFD(model, eps=0.0, steps=1, step_size=0.01, lr_ec=0.1, lr_e=0.1, lr_d=0.1, micro_batch=micro)
        featlab.seed_everything(1)
        logs = afd.step(x, y)
        states.append(({k: v.clone() for k, v in model.state_dict().items()}, logs))
    (whole, lw), (parts, lp) = states
    moved = max((whole[k] - tiny_model().state_dict()[k]).abs().max().item() for k in whole)
    assert moved > 1e-3
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=1e-5, atol=1e-6, msg=k)
    assert float(lp["ce_clean"]) == pytest.approx(float(lw["ce_clean"]), rel=1e-5)
    with pytest.raises(ValueError, match="micro_batch"):
        AFD(tiny_model(), micro_batch=0)


def test_the_no_game_ablation_schedules_no_optimiser_that_never_steps():
    """AFD(game=False) never runs E's adversarial step: a schedule on its optimiser made torch warn ("lr_scheduler.step()
    before optimizer.step()") in notebook 03's CIFAR-10 no-game run."""
    import warnings

    from featlab.train import AFD
    from conftest import tiny_model
    torch.manual_seed(0)
    for game in (True, False):
        model = tiny_model()
        afd = AFD(model, eps=0.1, steps=1, step_size=0.1, game=game)
        assert ("optimizer_e" in afd.optimizers()) is game and "optimizer_d" in afd.optimizers()
        x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 3
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)        # the scheduler's warning fails the test
            featlab.recipes.fit_fast_cifar(model, x, y, epochs=1, batch_size=16, objective=afd, device="cpu")
