"""Notebook 02's taught cell (the denoiser's training loss and one training step, in plain PyTorch) against
featlab's DenoiserObjective + FeatureLoss: the same batch and pair give the same loss and, after one step
from identical states, the same parameters (../shared/STYLE.md, "Teaching in the cells")."""
from __future__ import annotations

import ast
import copy
import inspect
import json
from pathlib import Path

import pytest
import torch

import featlab
from featlab.defenses import FeatureLoss, create_denoiser
from featlab.nbtools import TAUGHT_TAG, taught
from featlab.train import DenoiserObjective, Trainer

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_feature_loss_denoiser.ipynb"
RTOL = 1e-6          # fp32 rounding: the two sum the same terms in another order
LR = 0.5             # plain SGD: a parameter difference shows any gradient difference (Adam's first step hides scale)


@pytest.fixture(scope="module")
def ns():
    return taught(NOTEBOOK)


def _cells():
    return json.loads(NOTEBOOK.read_text())["cells"]


def _setup(arch, taps, pixel_weight, clean_weight):
    """A random MNIST-shaped batch, a fixed (x, x_adv) pair, a frozen random mnist_cnn, a small denoiser, and
    the library's objective handed that pair (it draws its own eps and attack per batch otherwise)."""
    torch.manual_seed(0)
    extractor = featlab.models.create("mnist_cnn").eval().requires_grad_(False)   # frozen, as the cell asks
    x = torch.rand(8, 1, 28, 28)
    x_adv = (x + 0.2 * torch.randn_like(x).sign()).clamp(0, 1)
    y = torch.randint(0, 10, (8,))
    den = create_denoiser(arch, channels=1, width=4)
    with torch.no_grad():    # a state from mid-training, not the init: the U-Nets start at or near the identity,
        if arch == "unet":   # where the clean term is zero or nearly so (the gated one: gates ~0.02; opened here)
            den.out.bias.zero_()
        for q in den.parameters():
            q.add_(0.05 * torch.randn_like(q))
    objective = DenoiserObjective(extractor, FeatureLoss(extractor, taps=taps, pixel_weight=pixel_weight),
                                  clean_weight=clean_weight)
    objective.make_pairs = lambda xb, yb: (x_adv, 0.2, "given")     # the seam: this pair, not a fresh draw
    loss_args = dict(taps=objective.loss_fn.taps, pixel_weight=pixel_weight, clean_weight=clean_weight)
    return extractor, den, objective, x, x_adv, y, loss_args


CASES = {   # BatchNorm in train mode and the default taps (every spatial one); the notebook's default architecture;
            # tap weights, a zero-weight tap, a pixel term and another clean_weight
    "bottleneck-default-taps": ("bottleneck", None, 0.0, 0.5),
    "residual-default-taps": ("residual", None, 0.0, 0.5),
    "unet-weighted-taps-pixel": ("unet", {"conv1": 0.5, "conv2": 0.0, "pool2": 2.0}, 1.0, 0.25),
}


@pytest.mark.parametrize("arch,taps,pixel_weight,clean_weight", CASES.values(), ids=list(CASES))
def test_taught_loss_and_step_match_the_denoiser_objective(ns, arch, taps, pixel_weight, clean_weight):
    extractor, den, objective, x, x_adv, y, loss_args = _setup(arch, taps, pixel_weight, clean_weight)
    before = copy.deepcopy(den)
    ours_den, lib_den = copy.deepcopy(den), copy.deepcopy(den)

    # (a) the loss: the objective's training loss on the same (x, x_adv), term by term and in total
    ours, terms = ns["denoiser_loss"](copy.deepcopy(den).train(), extractor, x, x_adv, **loss_args)
    lib, _, logs = objective.loss(copy.deepcopy(den).train(), x, y)
    torch.testing.assert_close(ours, lib, rtol=RTOL, atol=0)
    # "left" is a diagnostic the objective logs (the share of the attack's loss D leaves), not a term of the loss
    assert set(terms) == set(logs) - {"eps", "pgd", "left"}, "the same terms, under the library's log names"
    for k, v in terms.items():
        torch.testing.assert_close(v, logs[k], rtol=RTOL, atol=0, msg=k)

    # (b) one step from identical states: the cell's denoiser_step and the Trainer's own train_step
    ours_step, _ = ns["denoiser_step"](ours_den, torch.optim.SGD(ours_den.parameters(), lr=LR), extractor,
                                       x, x_adv, **loss_args)
    Trainer(lib_den, objective, optimizer=torch.optim.SGD(lib_den.parameters(), lr=LR), device="cpu",
            precision="fp32", memory_format="contiguous", progress=False)
    lib_step = objective.train_step(x, y)["loss"]
    torch.testing.assert_close(ours_step, lib_step, rtol=RTOL, atol=0)
    for (name, a), b in zip(ours_den.state_dict().items(), lib_den.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)     # parameters and BatchNorm buffers

    # (c) the step moved the parameters, so (b) can fail
    moved = max((a - b).abs().max().item() for a, b in zip(ours_den.parameters(), before.parameters()))
    assert moved > 1e-3, moved

    # (d) the clean term matters: without it the cell's loss would not match the library's
    no_clean, _ = ns["denoiser_loss"](copy.deepcopy(den).train(), extractor, x, x_adv,
                                      **{**loss_args, "clean_weight": 0.0})
    gap = (lib - no_clean).abs().item()
    assert gap > 1e3 * RTOL * lib.abs().item(), (gap, lib.item())
    torch.testing.assert_close(lib - no_clean, clean_weight * logs["clean_term"], rtol=1e-4, atol=0)


def test_taught_defaults_are_the_library_defaults(ns):
    loss = inspect.signature(ns["denoiser_loss"]).parameters
    assert loss["clean_weight"].default == inspect.signature(DenoiserObjective).parameters["clean_weight"].default
    assert loss["pixel_weight"].default == inspect.signature(FeatureLoss).parameters["pixel_weight"].default


def test_taught_cell_is_definitions_only():
    taught_cells = [c for c in _cells() if c["cell_type"] == "code" and TAUGHT_TAG in c["metadata"].get("tags", [])]
    assert len(taught_cells) == 2, "the loss (section 3) and the three attackers' models (section 6)"
    for cell in taught_cells:
        for node in ast.parse("".join(cell["source"])).body:
            assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)), ast.dump(node)[:80]


def test_the_notebook_trains_and_checks_with_the_taught_step():
    code = ["".join(c["source"]) for c in _cells()
            if c["cell_type"] == "code" and TAUGHT_TAG not in c["metadata"].get("tags", [])]
    assert any("for step in range" in s and "denoiser_step(" in s for s in code), "the hand loop uses the taught step"
    assert any("denoiser_step(" in s and ".train_step(" in s for s in code), "a cell compares it with the Trainer's step"
