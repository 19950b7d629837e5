import hashlib
import shutil

import numpy as np
import pytest
import torch

import featlab
from featlab import data
from conftest import needs_cifar10, needs_mnist, write_cifar_like


@needs_mnist
def test_mnist_real_facts():
    x, y = data.load("mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(float(x.mean()) - 0.1307) < 1e-3
    xt, yt = data.load("mnist", "test")
    assert xt.shape == (10000, 1, 28, 28) and len(yt) == 10000


@needs_mnist
def test_stratified_limit_is_balanced_and_seeded():
    x, y = data.load("mnist", "test", limit=1000, seed=3)
    assert len(y) == 1000 and y.bincount(minlength=10).tolist() == [100] * 10
    x2, y2 = data.load("mnist", "test", limit=1000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.load("mnist", "test", limit=1000, seed=4)
    assert not torch.equal(x, x3)
    _, y4 = data.load("mnist", "test", limit=25)      # not divisible by 10: still 25, spread out
    assert len(y4) == 25 and y4.bincount(minlength=10).min() >= 2


def test_stratified_handles_rare_classes():
    y = torch.tensor([0] * 50 + [1] * 2 + [2] * 50)
    idx = data._stratified(y, 30, 3, seed=0)
    counts = y[idx].bincount(minlength=3).tolist()
    assert len(idx) == 30 and counts[1] == 2 and counts[0] + counts[2] == 28


@needs_cifar10
def test_cifar10_real_verified_by_content():
    x, y = data.load("cifar10", "test")
    assert x.shape == (10000, 3, 32, 32) and y[:4].tolist() == [3, 8, 8, 0]
    assert y.bincount().tolist() == [1000] * 10


@needs_cifar10
def test_cifar10_tampered_copy_is_refused(tmp_path):
    src = data.data_root() / "cifar-10-batches-py"
    dst = tmp_path / "cifar-10-batches-py"
    shutil.copytree(src, dst)
    raw = bytearray((dst / "test_batch").read_bytes())
    raw[-100] ^= 0x01                       # one pixel bit flipped
    (dst / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(data.DataVerificationError, match="content verification"):
        data.load("cifar10", "test", root=tmp_path)


@needs_mnist
def test_mnist_truncated_file_is_refused(tmp_path):
    src = data.data_root() / "MNIST" / "raw"
    dst = tmp_path / "MNIST" / "raw"
    shutil.copytree(src, dst)
    f = dst / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(data.DataVerificationError, match="md5"):
        data.load("mnist", "test", root=tmp_path)


def _write_small_cifar100(root, n_train=200, n_test=100):
    rng = np.random.default_rng(0)
    files = {}
    for name, n in (("train", n_train), ("test", n_test)):
        files[name] = (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), np.arange(n) % 100)
    write_cifar_like(root / "cifar-100-python", files, label_key="fine_labels")
    return files


def test_cifar100_path_on_small_written_data(tmp_path, monkeypatch):
    files = _write_small_cifar100(tmp_path)
    sums = {s: (hashlib.sha256(d.tobytes()).hexdigest(), hashlib.sha256(l.astype("<i8").tobytes()).hexdigest())
            for s, (d, l) in files.items()}
    info = data.DATASETS["cifar100"]
    monkeypatch.setitem(data.DATASETS, "cifar100", type(info)(**{**info.__dict__, "content_sha256": sums}))
    x, y = data.load("cifar100", "train", root=tmp_path)
    assert x.shape == (200, 3, 32, 32) and y.max() == 99
    # pixels land where torchvision puts them: row = R plane, G plane, B plane
    assert torch.allclose(x[0, 1].flatten(), torch.from_numpy(files["train"][0][0, 1024:2048]).float() / 255)
    xs, ys = data.load("cifar100", "test", root=tmp_path, limit=50)
    assert len(ys) == 50
    model = featlab.models.create("resnet18", num_classes=100)
    assert model(xs[:2]).shape == (2, 100)


def test_cifar100_without_known_checksum_is_refused(tmp_path):
    _write_small_cifar100(tmp_path)   # random data: its md5 is not the published one
    with pytest.raises(data.DataVerificationError, match="md5"):
        data.load("cifar100", "train", root=tmp_path)


def test_missing_data_offline_fails_fast_with_clear_message(tmp_path, monkeypatch):
    probes = []
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: probes.append(timeout) or False)
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("mnist", "test", root=tmp_path)
    assert probes and all(t <= 5 for t in probes)       # one short reachability probe, then the error
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "FEATLAB_DATA" in msg and "cannot be reached" in msg


def test_failed_download_ends_in_the_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Broken(tvd.MNIST):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    class WritesNothing(tvd.MNIST):
        def __init__(self, *args, **kwargs):
            pass
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(tvd, "MNIST", Broken)
    with pytest.raises(data.DataNotFoundError, match="download failed: Error downloading") as e:
        data.load("mnist", "test", root=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(e.value)
    monkeypatch.setattr(tvd, "MNIST", WritesNothing)
    with pytest.raises(data.DataNotFoundError, match="download did not write t10k-images-idx3-ubyte"):
        data.load("mnist", "test", root=tmp_path)


@needs_mnist
def test_mnist_reads_the_verified_raw_files_not_a_processed_cache(tmp_path):
    # torchvision.datasets.MNIST prefers MNIST/processed/{training,test}.pt when both exist; featlab
    # verifies the raw files, so it must read those
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data.info("mnist").files["test"]:
        shutil.copy(data.data_root() / "MNIST" / "raw" / f, raw / f)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for f in ("training.pt", "test.pt"):
        torch.save((torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)), processed / f)
    x, y = data.load("mnist", "test", root=tmp_path)
    assert x.shape == (10000, 1, 28, 28) and y[:3].tolist() == [7, 2, 1]


def test_offline_flag_forbids_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATLAB_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match="FEATLAB_OFFLINE=1"):
        data.load("cifar10", "train", root=tmp_path)


def test_data_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATLAB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="imagenet", split="test"), "name must be one of"),
    (dict(name="mnist", split="val"), "split must be one of"),
    (dict(name="mnist", split="test", limit=0), "limit must be >= 1"),
    (dict(name="mnist", split="test", limit=2.5), "limit must be an int"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_dataset_pickles_cannot_run_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(pickle.dumps({"data": Evil(), "fine_labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._read_cifar_batch(d / "train", "fine_labels")


def test_cifar_augment_keeps_shape_range():
    x = torch.rand(16, 3, 32, 32)
    out = data.cifar_augment(x)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, x)
    same = data.cifar_augment(x, pad=0)           # no room to shift: each image is x or its mirror
    for a, b in zip(same, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))


def test_threat_defaults_and_eps_as_each_dataset_writes_it():
    c, m = data.threat_defaults("cifar10"), data.threat_defaults("mnist")
    assert c["eps"] == 8 / 255 and c["eps_list"] == [2 / 255, 4 / 255, 8 / 255] and c["l2_eps"] == 0.5
    assert m["eps"] == 0.3 and m["eps_list"] == [0.1, 0.2, 0.3] and m["l2_eps"] == 2.0
    for t in (c, m):
        lo, hi = t["denoiser_eps_range"]
        assert max(t["eps_list"]) == t["eps"] and lo < t["eps"] < hi and t["eps"] < t["eps_max"]
        assert t["curve_eps"][0] == 0 and max(t["curve_eps"]) > t["eps"]
    c["eps_list"].append(1.0)                                     # a fresh copy each call
    assert data.threat_defaults("cifar10")["eps_list"] == [2 / 255, 4 / 255, 8 / 255]
    assert [data.format_eps(e, "cifar10") for e in (2 / 255, 8 / 255, 0.5 / 255, 0.0314)] == \
        ["2/255", "8/255", "0.5/255", "8.01/255"]
    assert data.format_eps(0.3, "mnist") == "0.3" and data.format_eps(0.5, "cifar10", "l2") == "0.5"
    assert data.format_eps(0, "cifar10") == "0"
    with pytest.raises(ValueError, match="dataset"):
        data.format_eps(0.3, "svhn")
    with pytest.raises(ValueError, match="dataset"):
        data.threat_defaults("svhn")
