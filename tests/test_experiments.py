"""featlab.experiments (the layer under the CLI and the notebooks) and featlab.models.wrap (a reader's own
classifier): a torchvision CNN gets taps, and a small CNN trained here is evaluated end to end through the
CLI and through notebook 05, with the checklist."""
import json

import pytest
import torch
from torch import nn

from featlab import cli, data, experiments, models
from featlab.attacks import PGD
from conftest import MNIST_MEAN, MNIST_STD, needs_mnist



def test_wrap_gives_a_torchvision_resnet_taps_and_keeps_its_logits():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    model = models.wrap(net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), input_shape=(3, 32, 32))
    assert model.tap_names[:2] == ("conv1", "bn1") and model.tap_names[-3:] == ("avgpool", "embedding", "logits")
    x = torch.rand(3, 3, 32, 32)
    normed = (x - torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1)) / torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    feats = model.features(x)
    torch.testing.assert_close(feats["logits"], net(normed))            # the normalisation is inside, once
    torch.testing.assert_close(model(x), net(normed))
    assert feats["layer2"].shape == (3, 128, 4, 4) and model.embed(x).shape == (3, 512) and model.embedding_dim == 512
    assert list(model.features(x, ["layer1", "logits"])) == ["layer1", "logits"]
    # the state dict is the net's (plus the normalisation): a reader's checkpoint loads into it
    assert {k.removeprefix("net.") for k in model.state_dict() if k.startswith("net.")} == set(net.state_dict())
    # featlab's attacks take it as any featlab model: pixels in [0, 1], eps in pixel units
    x_adv = PGD(model, eps=8 / 255, steps=3)(x, model(x).argmax(1))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(mean=(0.5,)), "mean"),                               # 1 value for 3 channels
    (dict(std=(0.2, 0.0, 0.2)), "std"),
    (dict(input_shape=(3, 32)), "input_shape"),
    (dict(taps=["no_such_layer"]), "taps"),
    (dict(num_classes=7), "num_classes"),
    (dict(embedding="nope"), "embedding"),
])
def test_wrap_names_the_wrong_argument(kwargs, field):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(ValueError, match=f"^{field}"):
        models.wrap(net, **kwargs)
    with pytest.raises(TypeError, match="^module"):
        models.wrap("resnet18")


def test_configs_name_the_setting_that_is_wrong():
    with pytest.raises(experiments.ConfigError, match="^milestones") as e:
        experiments.TrainConfig(out="x", epochs=2, milestones=(3,))
    assert e.value.field == "milestones"
    with pytest.raises(experiments.ConfigError, match="^eps"):
        experiments.EvalConfig(eps=(2.0,))
    with pytest.raises(experiments.ConfigError, match="^attacks"):
        experiments.EvalConfig(attacks=("bogus",))
    with pytest.raises(experiments.ConfigError, match="^method"):
        experiments.TrainConfig(out="x", method="magic")
    with pytest.raises(experiments.ConfigError, match="^dataset"):
        experiments.resolve(module=models.wrap(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), input_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match="^module"):
        experiments.load_module("no_colon_here")


@needs_mnist
def test_a_readers_cnn_is_evaluated_end_to_end_through_the_cli(user_cnn, tmp_path, capsys):
    res = tmp_path / "results"
    cli.main(["eval", "--module", f"{user_cnn / 'my_cnn.py'}:build", "--weights", str(user_cnn / "w.pt"),
              "--dataset", "mnist", "--mean", str(MNIST_MEAN), "--std", str(MNIST_STD), "--attacks", "fgsm", "pgd10",
              "--eps", "0.1", "0.3", "--n-eval", "200", "--results-dir", str(res), "--device", "cpu"])
    recs = {p.name: json.loads(p.read_text()) for p in res.glob("user_build_*.json")}
    pgd = {r["eps"]: r for r in recs.values() if r["attack"] == "pgd10"}
    assert set(pgd) >= {0.1, 0.3} and all(r["method"] == "user" and r["n_eval"] == 200 for r in recs.values())
    assert pgd[0.1]["clean_acc"] > 90, "the weights loaded and the normalisation sits inside the wrapper"
    assert pgd[0.3]["robust_acc"] < pgd[0.1]["robust_acc"] < pgd[0.1]["clean_acc"]
    checks = pgd[0.3]["sanity"]["checks"]
    assert {"monotone", "reaches-zero", "iterative-vs-fgsm", "gradients-exist"} <= {c["id"] for c in checks}
    assert "--module" in pgd[0.3]["command"]
    # the flags a user module needs, refused by name before anything loads
    for argv, flag in ((["--module", f"{user_cnn / 'my_cnn.py'}:build"], "--dataset"),
                       (["--pretrained", "mnist_cnn_standard", "--weights", "w.pt"], "--weights")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["eval", *argv, "--n-eval", "10", "--results-dir", str(res)])
        assert exit_.value.code == 2 and flag in capsys.readouterr().err


@needs_mnist
def test_a_readers_cnn_behind_a_shipped_denoiser(user_cnn):
    """The wrapped CNN is a classifier like featlab's: a shipped denoiser stands in front of it (transfer)."""
    from featlab import metrics, pretrained
    mine = experiments.user_model(f"{user_cnn / 'my_cnn.py'}:build", "mnist", str(user_cnn / "w.pt"),
                                  [MNIST_MEAN], [MNIST_STD])
    x, y = data.load("mnist", "test", limit=200, seed=0)
    defended = models.Defended(pretrained.load("mnist_denoiser_feature"), mine).eval()
    assert metrics.accuracy(defended, x, y) > 85
