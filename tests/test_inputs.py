"""No silent numbers: malformed images or labels, through every public entry point that takes them,
end in a featlab error that names the argument, never in a returned number (every entry point x
fault pair runs, so coverage does not change from run to run)."""
from __future__ import annotations

import re

import pytest
import torch

import featlab
from featlab import evaluate, metrics, probe
from featlab.attacks import FGSM, PGD, autoattack, square
from featlab.train import AFD
from featlab.defenses import MedianFilter, embedding_separability
from featlab.probe import centroid_accuracy
from featlab.train import Standard, Trainer
from featlab.widgets import AttackExplorer, FeatureNoiseExplorer
from conftest import tiny_bn_model


def _set(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[x.numel() // 3] = value
    return x


BAD_IMAGES = {
    "a larger image (zero padded)": lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2)),
    "a smaller image": lambda x: x[:, :, 1:, 1:],
    "three channels for a one-channel model": lambda x: x.repeat(1, 3, 1, 1),
    "no batch dimension": lambda x: x[0],
    "an empty batch": lambda x: x[:0],
    "uint8 pixels 0..255": lambda x: (x * 255).to(torch.uint8),
    "float pixels 0..255": lambda x: x * 255,
    "negative pixels": lambda x: x - 0.5,
    "a NaN pixel": lambda x: _set(x, float("nan")),
    "an infinite pixel": lambda x: _set(x, float("inf")),
    "a list, not a tensor": lambda x: x.tolist(),
}
BAD_LABELS = {
    "labels out of range": lambda y: y + 10,
    "negative labels": lambda y: y - 5,
    "float labels": lambda y: y.float(),
    "one label too few": lambda y: y[:-1],
    "labels of shape (N, 1)": lambda y: y[:, None],
}


def _fit(m, x, y):
    return Trainer(m, Standard(), device="cpu", progress=False, precision="fp32").fit(x, y)


def _fit_eval(m, x, y):       # malformed evaluation data must be refused before training starts
    g = torch.Generator().manual_seed(0)
    return Trainer(m, Standard(), device="cpu", progress=False, precision="fp32").fit(
        torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), eval_data=(x, y))


IMAGE_ENTRIES = {
    "model(x)": lambda m, x, y: m(x),
    "model.embed": lambda m, x, y: m.embed(x),
    "model.features": lambda m, x, y: m.features(x),
    "metrics.predict": lambda m, x, y: metrics.predict(m, x),
    "probe.compare": lambda m, x, y: probe.compare(m, x, {"same": x}),
}
LABELLED_ENTRIES = {
    "metrics.accuracy": lambda m, x, y: metrics.accuracy(m, x, y),
    "metrics.robust_accuracy": lambda m, x, y: metrics.robust_accuracy(m, x, y, PGD(m, eps=0.1, steps=2),
                                                                       progress=False),
    "evaluate.sweep": lambda m, x, y: evaluate.sweep(m, x, y, ["fgsm"], [0.1], progress=False),
    "FGSM": lambda m, x, y: FGSM(m, eps=0.1)(x, y),
    "PGD": lambda m, x, y: PGD(m, eps=0.1, steps=2)(x, y),
    "autoattack (fast)": lambda m, x, y: autoattack(m, 0.1, version="fast", steps=2)(x, y),
    "square": lambda m, x, y: square(m, 0.1, n_queries=5)(x, y),
    "embedding_separability": lambda m, x, y: embedding_separability(m, x, y, FGSM(m, eps=0.1), steps=2),
    "centroid_accuracy": lambda m, x, y: centroid_accuracy(m, x, x, y),
    "Trainer.fit": _fit,
    "Trainer.fit eval_data": _fit_eval,
    "AFD.step": lambda m, x, y: AFD(m, eps=0.1, steps=1).step(x, y),
    "preprocessing_defense": lambda m, x, y: evaluate.preprocessing_defense(MedianFilter(3), m, x, y, [0.1], steps=1,
                                                                            progress=False),
    "AttackExplorer": lambda m, x, y: AttackExplorer({"m": m}, x, y),
    "FeatureNoiseExplorer": lambda m, x, y: FeatureNoiseExplorer({"m": m}, x, y, [0.1], attack_steps=1),
}
NAMES_AN_ARGUMENT = re.compile(r"(^|\W)(x|y|x_adv|eval_data\[[01]\]|perturbed\[.*\])(\W|$)")


def _good_batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def _refused(call, model, x, y) -> str:
    try:
        out = call(model, x, y)
    except (ValueError, TypeError) as err:
        return str(err)
    raise AssertionError(f"returned {type(out).__name__} instead of an error")


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
@pytest.mark.parametrize("entry", sorted({**IMAGE_ENTRIES, **LABELLED_ENTRIES}))
def test_malformed_images_are_refused_by_name(entry, bad):
    model = tiny_bn_model(num_classes=4)        # 4 classes: AutoAttack refuses fewer, by name, before the inputs
    x, y = _good_batch()
    call = {**IMAGE_ENTRIES, **LABELLED_ENTRIES}[entry]
    msg = _refused(call, model, BAD_IMAGES[bad](x), y)
    assert NAMES_AN_ARGUMENT.search(msg), f"{entry} with {bad}: the error names no argument: {msg}"


@pytest.mark.parametrize("bad", sorted(BAD_LABELS))
@pytest.mark.parametrize("entry", sorted(LABELLED_ENTRIES))
def test_malformed_labels_are_refused_by_name(entry, bad):
    model = tiny_bn_model(num_classes=4)
    x, y = _good_batch()
    msg = _refused(LABELLED_ENTRIES[entry], model, x, BAD_LABELS[bad](y))
    assert NAMES_AN_ARGUMENT.search(msg), f"{entry} with {bad}: the error names no argument: {msg}"


@pytest.mark.parametrize("entry", sorted({**IMAGE_ENTRIES, **LABELLED_ENTRIES}))
def test_every_entry_point_works_on_good_input(entry):
    """The other half: the same calls on a well-formed batch return (the refusals above are not a
    blanket refusal)."""
    model = tiny_bn_model(num_classes=4)
    x, y = _good_batch()
    {**IMAGE_ENTRIES, **LABELLED_ENTRIES}[entry](model, x, y)


def test_zero_padded_mnist_is_refused_by_the_shipped_afd():
    """The case from the issue: 32x32 zero-padded MNIST given to a 28x28 model used to get 92% accuracy."""
    model = featlab.pretrained.load("mnist_afd")
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"x: mnist_resnet takes float images of shape \(N, 1, 28, 28\)"):
        model(torch.nn.functional.pad(x, (2, 2, 2, 2)))
    with pytest.raises(ValueError, match="x must be 28x28 pixels"):
        metrics.accuracy(model, torch.nn.functional.pad(x, (2, 2, 2, 2)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x: resnet18 takes float images of shape \(N, 3, 32, 32\)"):
        featlab.models.create("resnet18")(torch.rand(2, 1, 32, 32))


# --------------------------------------------------------------------------- arguments that used to pass silently
# or end in a raw torch/Python error: each now ends in one line that names the argument
def _sweep(**kw):
    from conftest import tiny_model
    return probe.sweep({"m": tiny_model()}, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), [0.1], **kw)


BAD_ARGUMENTS = {
    "PGD step_size=0": ("step_size", lambda: PGD(tiny_bn_model(), eps=0.1, steps=5, step_size=0.0)),
    "autoattack n_queries=0": ("n_queries", lambda: autoattack(tiny_bn_model(), 0.1, n_queries=0)),
    "models.create num_classes=0": ("num_classes", lambda: featlab.models.create("mnist_cnn", num_classes=0)),
    "models.create num_classes=-3": ("num_classes", lambda: featlab.models.create("mnist_cnn", num_classes=-3)),
    "from_spec with a string eps": ("eps", lambda: featlab.attacks.from_spec("pgd10", tiny_bn_model(), "0.1")),
    "probe.sweep attack_steps=0": ("attack_steps", lambda: _sweep(attack_steps=0)),
    "data.load seed='a'": ("seed", lambda: featlab.data.load("mnist", "test", limit=10, seed="a")),
    "step_size_for steps=0": ("steps", lambda: featlab.attacks.step_size_for(0.1, 0)),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_a_bad_argument_gets_one_line_that_names_it(case):
    name, call = BAD_ARGUMENTS[case]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and re.match(rf"^{name}\b", message), message


def test_a_zero_step_is_allowed_only_at_eps_zero():
    """eps 0 (the slider's left end) keeps the step rule's zero step: the attack returns x itself."""
    x = torch.rand(3, 1, 8, 8)
    atk = PGD(tiny_bn_model(), eps=0.0, steps=3)
    assert atk.step_size == 0.0 and torch.equal(atk(x, torch.zeros(3, dtype=torch.long)), x)
