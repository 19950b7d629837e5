"""Notebook 03's taught cells (AFD's attack and three updates, in plain PyTorch) compute what featlab.train.AFD does.

``featlab.nbtools.taught`` runs the cells tagged "taught" in a fresh namespace. Their ``afd_step`` and the library's
``AFD.step`` start from identical copies of a model and a discriminator, see the same batch and the same random start
(the RNG seeded the same before each), and must leave the same parameters, buffers (BatchNorm statistics, the
power-iteration vectors of D's spectral norms) and gradients: fp32 on a CPU, so bit for bit, up to a tolerance far
below what any change to the step (a missing weight decay, a different order of D's calls) makes.
"""
import copy
import types
from pathlib import Path

import pytest
import torch

import featlab
from featlab.attacks import PGD
from featlab.nbtools import taught
from featlab.train import AFD

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_afd.ipynb"
EPS, STEPS, STEP_SIZE = 0.3, 3, 0.1
TAUGHT = ("pgd_linf", "afd_optimizers", "classifier_update", "embeddings", "discriminator_update", "encoder_update",
          "afd_step")
# far below the smallest change that matters: dropping the weight decay (1e-4 at lr 0.1) moves a weight w by 1e-5 |w|
TOL = dict(rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def cells():
    return taught(NOTEBOOK)


def _batch(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _state(model, D):
    """Every parameter and buffer of E + C and of D, by name."""
    return {**{f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()},
            **{f"D.{k}": v.detach().clone() for k, v in D.state_dict().items()}}


def _grads(model, D):
    """Every parameter's .grad after the step: the library writes D's from D's loss only, so a taught step that
    left D unfrozen during E's update (E's loss gradient added to D's .grad) differs here."""
    return {**{f"model.{k}": p.grad for k, p in model.named_parameters() if p.grad is not None},
            **{f"D.{k}": p.grad for k, p in D.named_parameters() if p.grad is not None}}


def test_the_taught_cells_define_the_step_and_nothing_else(cells):
    """Only definitions (no computation at the top level), all written in the cells (none imported from featlab)."""
    assert set(TAUGHT) <= set(cells)
    for name, value in cells.items():
        if name.startswith("__"):
            continue
        assert isinstance(value, (types.FunctionType, types.ModuleType, type)), f"{name}: {type(value).__name__}"
        if isinstance(value, (types.FunctionType, type)):
            assert value.__module__ == cells["__name__"], f"{name} comes from {value.__module__}, not from a cell"


def test_taught_attack_is_featlab_pgd_and_leaves_the_model_alone(cells):
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")           # train mode, as during training
    x, y = _batch()
    before = _state(model, torch.nn.Identity())
    torch.manual_seed(1)
    mine = cells["pgd_linf"](model, x, y, EPS, STEPS, STEP_SIZE)
    assert model.training and all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(_state(model, torch.nn.Identity()), before, rtol=0, atol=0)   # eval mode: BN untouched
    torch.manual_seed(1)
    lib = PGD(model, eps=EPS, steps=STEPS, step_size=STEP_SIZE)(x, y)
    torch.testing.assert_close(mine, lib, rtol=0, atol=0)
    assert (mine - x).abs().max() <= EPS + 1e-6 and mine.min() >= 0 and mine.max() <= 1
    assert (mine - x).abs().max() > EPS / 2, "the attack moved the images"


def test_taught_afd_step_is_the_library_step(cells):
    featlab.seed_everything(0)
    model = featlab.models.create("mnist_resnet")
    afd = AFD(model, eps=EPS, steps=STEPS, step_size=STEP_SIZE)          # the library's default rates and decay
    mine, D = copy.deepcopy(model), copy.deepcopy(afd.discriminator)
    optimizers = cells["afd_optimizers"](mine, D)                         # the cell's defaults
    start = _state(model, afd.discriminator)
    torch.testing.assert_close(_state(mine, D), start, rtol=0, atol=0)
    x, y = _batch()
    for seed in (1, 2):             # two steps: the second one uses the optimisers' momentum
        torch.manual_seed(seed)
        lib_logs = afd.step(x, y)
        torch.manual_seed(seed)
        my_logs = cells["afd_step"](mine, D, optimizers, x, y, EPS, STEPS, STEP_SIZE)
        torch.testing.assert_close({k: lib_logs[k] for k in my_logs}, my_logs, **TOL)
    torch.testing.assert_close(_state(mine, D), _state(model, afd.discriminator), **TOL)
    torch.testing.assert_close(_grads(mine, D), _grads(model, afd.discriminator), **TOL)
    # the comparison can fail: the step moved E, C and D (and D's spectral-norm vectors), well beyond the tolerance
    after = _state(mine, D)
    for prefix in ("model.encoder.", "model.head.", "D.", "D.phi.0.parametrizations.weight.0._u"):
        moved = max((after[k].float() - start[k].float()).abs().max().item() for k in after if k.startswith(prefix))
        assert moved > 1e-4, (prefix, moved)
