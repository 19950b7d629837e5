"""Shared fixtures: seeded RNG, tiny hand-built models, real MNIST subsets, a trained model."""
from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import featlab
from featlab.models.base import FeatureModel, Normalize

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FEATLAB_TEST", "1")
# `pytest` run by hand, outside the Makefile: use the data `make data` wrote, if it is there (the
# tests that need data skip with a reason otherwise); subprocesses inherit it
if not os.environ.get("FEATLAB_DATA") and (ROOT / ".cache" / "data").is_dir():
    os.environ["FEATLAB_DATA"] = str(ROOT / ".cache" / "data")


@pytest.fixture(autouse=True)
def _seeded():
    featlab.seed_everything(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


def tiny_model(channels: int = 1, size: int = 8, num_classes: int = 3) -> FeatureModel:
    """A deterministic 2-stage CNN small enough for property tests."""
    torch.manual_seed(1)
    enc = nn.Sequential(OrderedDict([
        ("conv", nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU())),
        ("flat", nn.Flatten()),
    ]))
    return FeatureModel(Normalize([0.5] * channels, [0.25] * channels), enc, nn.Linear(4 * size * size, num_classes),
                        (channels, size, size), num_classes, name="tiny")


def tiny_bn_model(channels: int = 1, size: int = 8, num_classes: int = 3) -> FeatureModel:
    """tiny_model with BatchNorm and Dropout: running the model in train mode by mistake changes its
    BatchNorm statistics (and makes its outputs random), so mode bugs show."""
    torch.manual_seed(1)
    enc = nn.Sequential(OrderedDict([
        ("conv", nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))),
        ("flat", nn.Flatten()),
    ]))
    model = FeatureModel(Normalize([0.5] * channels, [0.25] * channels), enc, nn.Linear(4 * size * size, num_classes),
                         (channels, size, size), num_classes, name="tiny_bn")
    with torch.no_grad():          # non-trivial running statistics, so a reset would show too
        bn = enc.conv[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def tiny_bn():
    return tiny_bn_model()


def have_data(name: str) -> bool:
    ds = featlab.data.info(name)
    root = featlab.data.data_root()
    return all((root / ds.folder / f).is_file() for f in ds.files["train"] + ds.files["test"])


def write_cifar_like(folder, files: dict, label_key: str = "fine_labels") -> None:
    """Write CIFAR-style batch pickles (torchvision's on-disk format): ``files`` maps a file name
    to (uint8 pixels N x 3072, labels N)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for fname, (data, labels) in files.items():
        buf = io.BytesIO()
        pickle.dump({"data": np.asarray(data, dtype=np.uint8).reshape(len(labels), 3072),
                     label_key: [int(v) for v in labels]}, buf, protocol=2)
        (folder / fname).write_bytes(buf.getvalue())


needs_mnist = pytest.mark.skipif(not have_data("mnist"), reason="real MNIST not under FEATLAB_DATA (.ci/run writes it)")
needs_cifar10 = pytest.mark.skipif(not have_data("cifar10"), reason="real CIFAR-10 not under FEATLAB_DATA")


@pytest.fixture(scope="session")
def mnist_small():
    """(x_train, y_train, x_test, y_test): 10,000 train and 1,000 test images of real MNIST."""
    if not have_data("mnist"):
        pytest.skip("real MNIST not under FEATLAB_DATA")
    x, y = featlab.data.load("mnist", "train", limit=10000)
    xt, yt = featlab.data.load("mnist", "test", limit=1000)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def trained_mnist(mnist_small):
    """The Madry CNN after one epoch of standard training on 10,000 real MNIST images (~10 s)."""
    featlab.seed_everything(0)
    x, y, xt, yt = mnist_small
    model = featlab.models.create("mnist_cnn")
    featlab.train.Trainer(model, epochs=1, device="cpu", progress=False).fit(x, y)
    return model.eval()


# a reader's own classifier (featlab.models.wrap): a file defining build() and weights trained with its own
# normalisation; test_experiments evaluates it through the CLI, test_notebooks through notebook 05 (USER_MODEL)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
USER_CNN = '''
from torch import nn

def build():
    """A reader's own MNIST CNN: it expects normalised images, as most training scripts make them."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
'''


@pytest.fixture(scope="session")
def user_cnn(tmp_path_factory):
    """The reader's CNN file and its weights, trained here on 6,000 MNIST images with its own normalisation."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_cnn.py").write_text(USER_CNN)
    from featlab import experiments
    net = experiments.load_module(f"{folder / 'my_cnn.py'}:build")
    if not have_data("mnist"):
        pytest.skip("real MNIST not under FEATLAB_DATA")
    x, y = featlab.data.load("mnist", "train", limit=6000, seed=0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(2):
        for i in torch.randperm(len(x)).split(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net((x[i] - MNIST_MEAN) / MNIST_STD), y[i]).backward()
            opt.step()
    torch.save(net.state_dict(), folder / "w.pt")
    return folder
