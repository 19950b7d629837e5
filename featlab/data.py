"""Datasets as tensors: images float32 in [0, 1], shape (N, C, H, W); labels int64 (N,).

The data root is ``FEATLAB_DATA`` if set, else ``~/.cache/featlab/data``. Files are laid out
as torchvision lays them out (``MNIST/raw``, ``cifar-10-batches-py``, ``cifar-100-python``).
When files are missing featlab downloads them through torchvision if the download host can
be reached within a few seconds; otherwise (or with ``FEATLAB_OFFLINE=1``) it raises
:class:`DataNotFoundError` naming the expected files and how to provide them.
Every file is verified before use: MNIST by file md5, CIFAR-10 by the sha256 of its *content*
(pixels and labels), so a copy re-pickled on another machine is accepted and a corrupted one
refused; CIFAR-100 (no published content hash) by the original files' md5 from torchvision.
torchvision reads the MNIST files and checks md5s; CIFAR batches are read here (see
:func:`_read_cifar_batch` for why).

    >>> x, y = load("mnist", "test", limit=1000)   # 100 images per class
    >>> x.shape, x.dtype
    (torch.Size([1000, 1, 28, 28]), torch.float32)
"""
from __future__ import annotations

import hashlib
import os
import pickle
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import torch

from ._utils import check_choice, check_number

SPLITS = ("train", "test")


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset is missing (or fails verification) and cannot be downloaded."""


class DataVerificationError(ValueError):
    """Raised when a dataset file exists but its checksum does not match."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str                      # relative to the data root
    files: dict[str, list[str]]      # split -> files inside folder
    shape: tuple[int, int, int]      # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    # split -> {file: md5} (whole-file checks) or split -> (sha256 of uint8 pixels, of int64 labels)
    file_md5: dict[str, str] = field(default_factory=dict)
    content_sha256: dict[str, tuple[str, str]] = field(default_factory=dict)


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_TORCHVISION_CLASS = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


def _torchvision_class(name: str):
    import torchvision.datasets as tvd   # imported on first use: torchvision is slow to import
    return getattr(tvd, _TORCHVISION_CLASS[name])


def _torchvision_md5(name: str) -> dict[str, str]:
    """CIFAR file md5s as torchvision publishes them (read from torchvision, not copied here; MNIST's are in
    ``file_md5``: torchvision lists md5s only for its .gz archives)."""
    cls = _torchvision_class(name)
    return {f: md5 for f, md5 in list(cls.train_list) + list(cls.test_list)}


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist", folder="MNIST/raw",
        files={"train": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
               "test": ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]},
        shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,),
        classes=tuple(str(i) for i in range(10)),
        # the published md5s of the raw (uncompressed) IDX files (torchvision lists the .gz ones)
        file_md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                  "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
                  "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                  "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}),
    "cifar10": DatasetInfo(
        name="cifar10", folder="cifar-10-batches-py",
        files={"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]},
        shape=(3, 32, 32), num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        classes=_CIFAR10_CLASSES,
        # sha256 of the uint8 pixel array (N x 3072, R/G/B planes) and of the labels as int64 LE
        content_sha256={
            "train": ("9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
                      "f5cfe00b0f00968c0cc5ff3b1d2de51b10e33efa277c2986f4e0fa63e58c9f4f"),
            "test": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                     "cbb7365de8ed11f05cc4c3a1e7f78144127c5e851efd83762fb18202461230bb")}),
    "cifar100": DatasetInfo(
        name="cifar100", folder="cifar-100-python",
        files={"train": ["train"], "test": ["test"]},
        shape=(3, 32, 32), num_classes=100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        classes=tuple(f"class_{i}" for i in range(100)),
        # no published content hash: the original files' md5 (from torchvision) are checked
        file_md5={}),
}


# Threat-model defaults per dataset: Linf radii and budgets in pixel units (the notebooks' and the CLI's
# common values: Madry et al.'s 0.3 on MNIST, 8/255 on CIFAR; L2 2.0 / 0.5). ``eps_max``: the explorer's
# slider range; ``curve_eps``: an attack-success curve over eps; ``denoiser_eps_range``: the Linf radii a
# denoiser trains on (a margin above ``eps``).
_THREAT: dict[str, dict] = {
    "mnist": dict(eps=0.3, eps_list=(0.1, 0.2, 0.3), l2_eps=2.0, eps_max=0.5,
                  curve_eps=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4), denoiser_eps_range=(0.05, 0.35)),
    "cifar10": dict(eps=8 / 255, eps_list=(2 / 255, 4 / 255, 8 / 255), l2_eps=0.5, eps_max=16 / 255,
                    curve_eps=tuple(k / 255 for k in (0, 2, 4, 8, 12, 16)),    # six points: a CPU class's budget
                    denoiser_eps_range=(2 / 255, 10 / 255)),
}
_THREAT["cifar100"] = _THREAT["cifar10"]


def threat_defaults(dataset: str) -> dict:
    """The usual threat model of ``dataset``, in pixel units: ``eps`` (the headline Linf radius: 0.3 on
    MNIST, 8/255 on CIFAR), ``eps_list`` (a sweep up to it), ``l2_eps`` (2.0 / 0.5), ``eps_max`` (an
    explorer's slider maximum), ``curve_eps`` (an attack-success curve) and ``denoiser_eps_range``
    (the Linf radii a denoiser trains on). A fresh dict each call (lists where the values are lists).

        >>> threat_defaults("cifar10")["eps"] * 255
        8.0
    """
    check_choice("dataset", dataset, DATASETS)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _THREAT[dataset].items()}


def format_eps(eps: float, dataset: str, norm: str = "linf") -> str:
    """An eps as people write it for ``dataset``: Linf budgets on CIFAR in /255 ("8/255", "2/255";
    "0.5/255" for a fraction), everything else as a plain number ("0.3"; L2 "0.5")."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("norm", norm, ("linf", "l2"))
    eps = float(eps)
    if dataset.startswith("cifar") and norm == "linf" and eps > 0:
        return f"{eps * 255:.3g}/255"
    return f"{eps:g}"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEATLAB_DATA``, else ``~/.cache/featlab/data``."""
    if root is None:
        root = os.environ.get("FEATLAB_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "featlab", "data")
    return Path(root).expanduser()


def info(name: str) -> DatasetInfo:
    """Static facts about a dataset (shape, classes, mean/std) without touching the disk."""
    check_choice("name", name, DATASETS)
    return DATASETS[name]


# --------------------------------------------------------------------------- reading files
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that refuses anything but numpy arrays and builtins."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}   # how protocol-2 pickles written by Python 3 store bytes

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch pickle without letting it run code.

    Kept hand-written on purpose: torchvision's CIFAR10/CIFAR100 read batches with plain
    ``pickle.load(f, encoding="latin1")``, which calls whatever a pickle names, so a doctored
    batch file runs code when loaded. (Those classes also demand the original tarball's file
    md5s, which the re-pickled copies written by ``shared/data/prepare.py`` do not have.)
    """
    with open(path, "rb") as f:
        d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise DataVerificationError(f"{path}: not a CIFAR batch file (keys {sorted(d)}; need 'data' and {label_key!r})")
    return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3072), np.asarray(d[label_key], dtype=np.int64)


_VERIFIED: dict[tuple[str, str], tuple] = {}   # (dataset, split) -> stat signature already verified


def _signature(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def _expected_files_message(ds: DatasetInfo, split: str, root: Path, why: str) -> str:
    folder = root / ds.folder
    listing = "\n".join(f"    {folder / f}" for f in ds.files[split])
    return (f"{ds.name} ({split}) is not available: {why}.\nExpected files:\n{listing}\n"
            f"Provide them in one of these ways:\n"
            f"  - set FEATLAB_DATA to a folder that has them (torchvision's layout), e.g. one written by\n"
            f"    `python ../shared/data/prepare.py DEST` in the featlab lab, or copied from another machine;\n"
            f"  - or run once with internet access, and featlab downloads them through torchvision.\n"
            f"Data root now: {root} (from {'FEATLAB_DATA' if os.environ.get('FEATLAB_DATA') else 'the default'}).")


def _missing(ds: DatasetInfo, root: Path, split: str) -> list[str]:
    return [f for f in ds.files[split] if not (root / ds.folder / f).is_file()]


def available(name: str, split: str = "test", root: str | os.PathLike | None = None) -> bool:
    """Whether a dataset's files for ``split`` are on disk (without verifying or downloading)."""
    check_choice("name", name, DATASETS)
    check_choice("split", split, SPLITS)
    return not _missing(DATASETS[name], data_root(root), split)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` s (DNS included).

    torchvision downloads with ``urllib.request.urlopen`` and no timeout, so offline it can hang
    for minutes; this probe makes a missing dataset fail fast instead."""
    host = urlparse(url).hostname
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0]


def _download(ds: DatasetInfo, root: Path, split: str, reason: str) -> None:
    """Download through torchvision (``download=True``) if its host answers; else DataNotFoundError."""
    cls = _torchvision_class(ds.name)
    url = cls.mirrors[0] if ds.name == "mnist" else cls.url
    if os.environ.get("FEATLAB_OFFLINE") == "1" or not _reachable(url):
        why = reason + ("; FEATLAB_OFFLINE=1 forbids downloading" if os.environ.get("FEATLAB_OFFLINE") == "1"
                        else f"; the download host {urlparse(url).hostname} cannot be reached (offline?)")
        raise DataNotFoundError(_expected_files_message(ds, split, root, why))
    try:
        # torchvision checks the archive's md5 and, for CIFAR, every extracted file's md5 before it
        # unpickles them, so only the published files reach its plain pickle.load here.
        cls(str(root), train=(split == "train"), download=True)
    except Exception as e:   # network errors of every kind end in one clear message
        raise DataNotFoundError(_expected_files_message(ds, split, root, f"{reason}; download failed: {e}")) from None
    still = _missing(ds, root, split)
    if still:   # e.g. torchvision's MNIST skips the download when an old MNIST/processed cache exists
        raise DataNotFoundError(_expected_files_message(
            ds, split, root, f"{reason}; the download did not write {', '.join(still)}"))


def _read_split(ds: DatasetInfo, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = root / ds.folder
    paths = [folder / f for f in ds.files[split]]
    if ds.name == "mnist":
        # torchvision's IDX readers (what torchvision.datasets.MNIST uses), called on the verified
        # files: the MNIST class itself prefers an old MNIST/processed/*.pt cache if one exists.
        from torchvision.datasets.mnist import read_image_file, read_label_file
        images, labels = read_image_file(str(paths[0])), read_label_file(str(paths[1]))
        return images.numpy().reshape(-1, 1, 28, 28), labels.numpy()
    label_key = "labels" if ds.name == "cifar10" else "fine_labels"
    parts = [_read_cifar_batch(p, label_key) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _verify(ds: DatasetInfo, root: Path, split: str, arrays: Callable[[], tuple[np.ndarray, np.ndarray]]):
    """Verify a split's files; return the arrays if they had to be read for it (else None)."""
    folder = root / ds.folder
    paths = [folder / f for f in ds.files[split]]
    key = (ds.name, split)
    if _VERIFIED.get(key) == _signature(paths):
        return None
    out = None
    if ds.content_sha256.get(split):
        out = arrays()
        want = ds.content_sha256[split]
        got = (hashlib.sha256(np.ascontiguousarray(out[0]).reshape(len(out[0]), -1).tobytes()).hexdigest(),
               hashlib.sha256(out[1].astype("<i8").tobytes()).hexdigest())
        if got != want:
            raise DataVerificationError(
                f"{ds.name} ({split}) in {folder} failed content verification (sha256 of pixels and labels "
                f"differ from the published data): the files are corrupted or not {ds.name}. "
                f"Delete them and provide fresh copies.")
    else:
        from torchvision.datasets.utils import calculate_md5, check_integrity
        md5s = ds.file_md5 or _torchvision_md5(ds.name)
        for p in paths:
            want = md5s.get(p.name)
            if want is None:
                raise DataVerificationError(f"no checksum is known for {p}; cannot verify it")
            if not check_integrity(str(p), want):
                raise DataVerificationError(f"{p}: md5 {calculate_md5(str(p))} differs from the published {want}: "
                                            f"the file is corrupted or truncated. Delete it and provide a fresh copy.")
    _VERIFIED[key] = _signature(paths)
    return out


def _stratified(labels: torch.Tensor, limit: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of ``limit`` examples, as equal per class as the data allows, chosen with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    counts = [0] * num_classes
    remaining, active = limit, [c for c in range(num_classes) if len(per_class[c])]
    while remaining > 0 and active:             # round-robin fill, so rare classes give what they have
        share = max(1, remaining // len(active))
        for c in list(active):
            take = min(share, len(per_class[c]) - counts[c], remaining)
            counts[c] += take
            remaining -= take
            if counts[c] == len(per_class[c]):
                active.remove(c)
            if remaining == 0:
                break
    idx = torch.cat([per_class[c][:counts[c]] for c in range(num_classes)])
    return idx.sort().values


def load(name: str, split: str = "test", limit: int | None = None, seed: int = 0,
         root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as tensors.

    Args:
        name: "mnist", "cifar10" or "cifar100".
        split: "train" or "test".
        limit: keep this many examples, stratified by class (None: all).
        seed: which examples ``limit`` keeps (default 0, so runs repeat).
        root: data root (default: ``$FEATLAB_DATA`` or ``~/.cache/featlab/data``).

    Returns:
        x: float32 (N, C, H, W) with pixels in [0, 1]; y: int64 (N,).
    """
    check_choice("name", name, DATASETS)
    check_choice("split", split, SPLITS)
    if limit is not None:
        check_number("limit", limit, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    ds, root = DATASETS[name], data_root(root)
    missing = _missing(ds, root, split)
    if missing:
        _download(ds, root, split, f"missing {', '.join(missing)}")
    arrays = _verify(ds, root, split, lambda: _read_split(ds, root, split))
    images, labels = arrays if arrays is not None else _read_split(ds, root, split)
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, *ds.shape)
    y = torch.from_numpy(np.ascontiguousarray(labels)).long()
    if limit is not None and limit < len(y):
        idx = _stratified(y, limit, ds.num_classes, seed)
        x, y = x[idx], y[idx]
    return x.float().div_(255.0), y


def cifar_augment(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip, per image, on the batch's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (i.view(n, 1) + torch.arange(h, device=x.device).view(1, h))          # n, h
    cols = (j.view(n, 1) + torch.arange(w, device=x.device).view(1, w))          # n, w
    out = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
