"""featlab.recipes: the fast CIFAR recipe's schedule and defaults, the notebooks' live models, and the shipped
model or a live one, never silently."""
import math

import pytest
import torch

import featlab
from featlab import recipes
from featlab.train import AFD


@pytest.fixture
def tiny_cifar():
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


def test_fit_fast_cifar_schedule_and_small_data_defaults(tiny_cifar):
    """64 images: batches of 32 (20 steps an epoch is asked for, 32 the floor), lr 0.4 * sqrt(32/500); the
    per-step triangle peaks after epochs/5 and ends at 0."""
    x, y = tiny_cifar
    featlab.seed_everything(0)
    model = featlab.models.create("cifar_airnet")
    hist = recipes.fit_fast_cifar(model, x, y, epochs=2, device="cpu", progress=False)
    peak = 0.4 * math.sqrt(32 / 500)
    # 4 steps in all, warmup round(0.4 * 2) = 1 step: after epoch 1 (2 steps) the factor is (4 - 2) / (4 - 1)
    assert hist[0]["lr"] == pytest.approx(peak * 2 / 3) and hist[1]["lr"] == 0.0
    with pytest.raises(ValueError, match="epochs"):
        recipes.fit_fast_cifar(model, x, y, epochs=0)


def test_fit_fast_cifar_keeps_an_objectives_own_optimisers(tiny_cifar):
    x, y = tiny_cifar
    featlab.seed_everything(0)
    model = featlab.models.create("cifar_airnet")
    afd = AFD(model, eps=8 / 255, steps=1, step_size=10 / 255, lr_ec=0.05, lr_e=0.02, lr_d=0.03)
    recipes.fit_fast_cifar(model, x, y, afd, epochs=1, batch_size=32, device="cpu", progress=False)
    for opt, lr in ((afd.optimizer_ec, 0.05), (afd.optimizer_e, 0.02), (afd.optimizer_d, 0.03)):
        group = opt.param_groups[0]
        assert group["initial_lr"] == lr and group["lr"] == 0.0, "AFD's rates kept, the triangle applied to each"


def test_train_live_builds_each_datasets_model(tiny_cifar):
    x, y = tiny_cifar
    model, hist = recipes.train_live("cifar10", x, y, "adversarial", epochs=1, device="cpu", progress=False)
    assert model.name == "cifar_airnet" and not model.training and len(hist) == 1
    for kwargs, match in ((dict(dataset="svhn"), "dataset"), (dict(method="trades"), "method")):
        with pytest.raises(ValueError, match=match):
            recipes.train_live(**{"dataset": "cifar10", "x": x, "y": y, "method": "standard", **kwargs})


def test_shipped_or_trained_says_which(capsys):
    trained = []

    def train():
        trained.append(1)
        return torch.nn.Identity()
    model, shipped = recipes.shipped_or_trained("mnist_cnn_standard", train)
    assert shipped and not trained and model.name == "mnist_cnn"
    assert "shipped mnist_cnn_standard: featlab train" in capsys.readouterr().out
    model, shipped = recipes.shipped_or_trained("no_such_model", train)
    assert not shipped and trained == [1] and isinstance(model, torch.nn.Identity)
    assert "no_such_model is not shipped" in capsys.readouterr().out, "a missing model is never replaced silently"
    model, shipped = recipes.shipped_or_trained("mnist_cnn_standard", train, use_shipped=False)
    assert not shipped and trained == [1, 1] and capsys.readouterr().out == ""


def test_every_lineup_names_shipped_models_of_its_dataset():
    from featlab import pretrained, recipes
    for dataset in recipes.LINEUPS:
        lineup = recipes.lineup(dataset)
        names = [lineup["standard"], lineup["robust"], lineup["denoiser"], *lineup["compared"]]
        assert all(pretrained.info(n)["dataset"] == dataset for n in names), dataset
        assert pretrained.info(lineup["denoiser"])["kind"] == "denoiser"
        model = pretrained.load(lineup["standard"])
        assert lineup["feature_tap"] in model.tap_names
        lineup["compared"].append("x")
        assert "x" not in recipes.lineup(dataset)["compared"], "a fresh copy each call"
    with pytest.raises(ValueError, match="^dataset"):
        recipes.lineup("imagenet")


@pytest.mark.parametrize("lab", [recipes.denoiser_lab, recipes.afd_lab])
def test_labs_are_fresh_per_call_and_name_the_dataset(lab):
    a = lab("mnist")
    a["shipped"].clear()
    assert lab("mnist")["shipped"], "a notebook that edits its lab leaves the next call's defaults alone"
    with pytest.raises(ValueError, match="dataset.*mnist"):
        lab("svhn")


def test_labs_name_shipped_models_and_controls_that_exist():
    for dataset in ("mnist", "cifar10"):
        d, a = recipes.denoiser_lab(dataset), recipes.afd_lab(dataset)
        assert set(d["controls"]) <= set(featlab.defenses.CONTROLS)
        assert a["arch"] in featlab.models.MODELS
        shipped = list(d["shipped"].values()) + list(a["shipped"].values()) + [a["standard"]] + \
            [k for k in (d["other_shipped"], d["other_own_denoiser"]) if k is not None]
        assert set(shipped) <= set(featlab.pretrained.available()), set(shipped) - set(featlab.pretrained.available())
        assert d["eps"] == featlab.data.threat_defaults(dataset)["eps"]


def test_fit_dispatches_on_the_dataset(tiny_cifar):
    x, y = tiny_cifar
    featlab.seed_everything(0)
    model = featlab.models.create("cifar_airnet")
    hist = recipes.fit("cifar10", model, x, y, epochs=1, batch_size=32, device="cpu", progress=False)
    assert hist[-1]["lr"] == 0.0, "CIFAR-10: the fast recipe's triangle, down to 0"

    g = torch.Generator().manual_seed(1)
    xm, ym = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    model = featlab.models.create("mnist_cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = recipes.fit("mnist", model, xm, ym, epochs=2, batch_size=16, optimizer=opt, milestones=[1], device="cpu",
                       progress=False)
    assert [h["lr"] for h in hist] == pytest.approx([0.1, 0.01]), "MNIST: the Trainer, its rate cut at epoch 1"
    with pytest.raises(ValueError, match="milestones"):
        recipes.fit("mnist", model, xm, ym, epochs=1, batch_size=16, milestones=[1], device="cpu", progress=False)


def test_second_classifier_on_cifar_is_shipped_or_trains_from_the_next_seed(tiny_cifar):
    x, y = tiny_cifar
    if "cifar_airnet_standard_seed1" in featlab.pretrained.available():     # shipped: loaded, nothing trains
        model, label, shipped = recipes.second_classifier("cifar10", x, y, epochs=1, seed=3)
        assert (label, shipped) == ("airnet (seed 1)", True)
        ref = featlab.pretrained.load("cifar_airnet_standard_seed1", "cpu")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    model, label, shipped = recipes.second_classifier("cifar10", x, y, epochs=1, seed=3, use_shipped=False)
    again, _ = recipes.train_live("cifar10", x, y, epochs=1, device="cpu", seed=4, progress=False)
    assert (label, shipped) == ("airnet (seed 1)", False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def _assert_same_training(model_name, *runs):
    """Each run trains a fresh ``model_name`` from seed 0; all end in the same state dict, bit for bit."""
    states = []
    for run in runs:
        featlab.seed_everything(0)
        model = featlab.models.create(model_name)
        run(model)
        states.append(model.state_dict())
    for other in states[1:]:
        for k in states[0]:
            torch.testing.assert_close(states[0][k], other[k], rtol=0, atol=0)


def test_fit_on_cifar_is_the_fast_recipe_with_its_label_smoothing(tiny_cifar):
    """recipes.fit("cifar10", objective=None) trains exactly as fit_fast_cifar's default (label smoothing 0.2); MNIST
    without an optimiser is the Trainer's Adam without a schedule."""
    x, y = tiny_cifar
    _assert_same_training(
        "cifar_airnet",
        lambda m: recipes.fit("cifar10", m, x, y, epochs=1, batch_size=32, device="cpu", progress=False),
        lambda m: recipes.fit_fast_cifar(m, x, y, epochs=1, batch_size=32, device="cpu", progress=False))
    g = torch.Generator().manual_seed(1)
    xm, ym = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    _assert_same_training(
        "mnist_cnn",
        lambda m: recipes.fit("mnist", m, xm, ym, epochs=2, batch_size=16, device="cpu", progress=False),
        lambda m: featlab.train.Trainer(m, featlab.train.Standard(), epochs=2, batch_size=16, device="cpu",
                                        progress=False).fit(xm, ym))


def _parameters(stem):
    """A notebook's parameters cell, executed: its default values by name."""
    import json
    from pathlib import Path
    cells = json.loads((Path(__file__).resolve().parent.parent / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    exec("".join(cell["source"]), values)
    return {k: v for k, v in values.items() if k.isupper()}


@pytest.mark.parametrize("stem", sorted(recipes.NOTEBOOK_FILLS))
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_setup_fills_each_notebooks_defaults_from_the_dataset(stem, dataset, capsys):
    values = dict(_parameters(stem), DATASET=dataset, DEVICE="cpu")
    given = {k for k, v in values.items() if v is not None}
    assert str(recipes.setup(values, stem)) == "cpu"
    filled = {k for k, v in values.items() if v is not None} - given
    out = capsys.readouterr().out
    assert all(f"{k} = " in out for k in filled), (filled, out)      # it says what it filled
    n = next(k for k in ("N_IMAGES", "N_EVAL", "N_CURVE") if k in values)
    lab = {**recipes.lineup(dataset), **(recipes.afd_lab(dataset) if stem == "03_afd" else {}),
           **(recipes.denoiser_lab(dataset) if stem.startswith("02") else {})}
    key = {"N_IMAGES": "n_images", "N_EVAL": "n_eval", "N_CURVE": "n_curve"}[n]
    assert values[n] == lab[key], "the test images come from the dataset's lab"
    if "EPS_LIST" in values:
        assert values["EPS_LIST"] and all(0 < e <= 1 for e in values["EPS_LIST"])
    if "EPS" in values:
        assert values["EPS"] == featlab.data.threat_defaults(dataset)["eps"]
    if values.get("FULL_SCHEDULE") is False:       # the GPU schedule: all data where the notebook trains
        full = dict(_parameters(stem), DATASET=dataset, DEVICE="cpu", FULL_SCHEDULE=True)
        recipes.setup(full, stem)
        assert any(full[k] != values[k] for k in full), "the GPU schedule changes something"


def test_setup_names_a_wrong_parameter_and_an_unknown_notebook():
    values = dict(_parameters("03_afd"), EPOCHS="two")
    with pytest.raises(featlab.nbtools.ParameterError, match="EPOCHS = 'two': must be an integer >= 1"):
        recipes.setup(values, "03_afd")
    with pytest.raises(ValueError, match="notebook.*01_feature_noise"):
        recipes.setup(_parameters("03_afd"), "06_missing")
    cifar = dict(_parameters("05_honest_evaluation"), DATASET="cifar10", DEVICE="cpu")
    recipes.setup(cifar, "05_honest_evaluation")
    assert cifar["ATTACKS"] == ["fgsm", "pgd10"] and cifar["EPS"] in cifar["EPS_LIST"]
    full = dict(_parameters("05_honest_evaluation"), DEVICE="cpu", FULL_SCHEDULE=True)
    recipes.setup(full, "05_honest_evaluation")
    assert full["ATTACKS"][-1] == "pgd40x5" and full["N_EVAL"] == 1000
