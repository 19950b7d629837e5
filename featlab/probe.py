"""How far a perturbation travels: relative distortion of every feature tap.

For clean inputs x and perturbed inputs x' the relative distortion at tap l is
``||f_l(x') - f_l(x)|| / ||f_l(x)||`` per example (L2 and Linf over the tap's values),
reported as mean and standard deviation over the batch. The tap ``"input"`` is the same
ratio on the pixels, for reference. One forward pass per input set, no gradients.

    >>> x_adv = PGD(model, eps=0.1, steps=20)(x, y)
    >>> x_rnd = random_noise(x, eps=0.1, kind="sign")
    >>> res = compare(model, x, {"adversarial": x_adv, "random": x_rnd})
    >>> amplification(res["adversarial"], res["random"])     # per tap, adv / random
    >>> describe_change(ratio_interval(res["adversarial"].l2["embedding"], res["adversarial"].l2["input"]))
    'grows (1.94x, 95% interval 1.90-1.98)'

Introduced in notebooks/01_feature_noise.ipynb.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ._utils import check_choice, check_images, check_labels, check_model_input, check_number, eval_mode
from ._utils import model_device, show_progress
from .models.base import L2Normalize

INPUT_TAP = "input"


@dataclass
class Distortion:
    """Per-tap relative distortions of one perturbed set. Each tensor has shape (N,)."""

    l2: dict[str, torch.Tensor]
    linf: dict[str, torch.Tensor]

    @property
    def taps(self) -> list[str]:
        return list(self.l2)

    def mean(self, norm: str = "l2") -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self._by(norm).items()}

    def std(self, norm: str = "l2") -> dict[str, float]:
        return {k: float(v.std()) if v.numel() > 1 else 0.0 for k, v in self._by(norm).items()}

    def _by(self, norm: str) -> dict[str, torch.Tensor]:
        check_choice("norm", norm, ("l2", "linf"))
        return self.l2 if norm == "l2" else self.linf


def _relative(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example relative L2 and Linf distance of b from a (a is the clean reference)."""
    d = (b - a).flatten(1).float()
    ref = a.flatten(1).float()
    eps = torch.finfo(torch.float32).tiny
    l2 = d.norm(dim=1) / ref.norm(dim=1).clamp_min(eps)
    linf = d.abs().amax(dim=1) / ref.abs().amax(dim=1).clamp_min(eps)
    return l2, linf


@torch.no_grad()
def _taps(model: nn.Module, x: torch.Tensor, layers: list[str] | None, batch_size: int) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(x), batch_size):
        for k, v in model.features(x[i:i + batch_size], layers).items():
            outs.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def default_taps(model: nn.Module) -> list[str]:
    """The taps a probe measures by default: every tap of ``model.tap_names`` but the encoder's last stage
    (a :class:`featlab.models.FeatureModel`'s ``"embedding"`` is that stage's output, the same tensor: ``fc1``
    of the MNIST CNN, ``pool`` of cifar_airnet), so no curve shows one tensor twice. Other models: all taps."""
    taps = list(model.tap_names)
    encoder = getattr(model, "encoder", None)
    stages = [n for n, _ in encoder.named_children()] if isinstance(encoder, nn.Sequential) else []
    if stages and "embedding" in taps and stages[-1] in taps:
        taps.remove(stages[-1])
    return taps


@torch.no_grad()
def compare(model: nn.Module, x: torch.Tensor, perturbed: Mapping[str, torch.Tensor],
            layers: Iterable[str] | None = None, batch_size: int = 1000) -> dict[str, Distortion]:
    """Relative distortion per tap for each perturbed set (clean taps computed once).

    Args:
        model: a featlab model (has ``features`` and ``tap_names``).
        x: clean images (N, C, H, W) in [0, 1].
        perturbed: name -> perturbed images, each shaped like x.
        layers: taps to measure (default: :func:`default_taps`, every tap but the encoder's last stage, which is
            the same tensor as ``"embedding"``).
        batch_size: images per forward pass (memory only; results do not depend on it).

    Returns:
        name -> :class:`Distortion`, taps ordered "input" then shallow to deep.
    """
    if not hasattr(model, "features"):
        raise TypeError("model must be a featlab model with features(x, layers) and tap_names")
    check_model_input(model, x, name="x")
    if not perturbed:
        raise ValueError("perturbed must map at least one name to perturbed images")
    layers = default_taps(model) if layers is None else list(model._resolve(layers))
    for name, xp in perturbed.items():
        check_model_input(model, xp, name=f"perturbed[{name!r}]")
        if xp.shape != x.shape:
            raise ValueError(f"perturbed[{name!r}] must have the shape of x {tuple(x.shape)}, got {tuple(xp.shape)}")
    device = model_device(model)
    with eval_mode(model):
        clean = _taps(model, x.to(device), layers, batch_size)
        out: dict[str, Distortion] = {}
        for name, xp in perturbed.items():
            pert = _taps(model, xp.to(device), layers, batch_size)
            l2, linf = {}, {}
            l2[INPUT_TAP], linf[INPUT_TAP] = _relative(x.cpu(), xp.cpu())
            for k in clean:
                l2[k], linf[k] = _relative(clean[k], pert[k])
            out[name] = Distortion(l2, linf)
    return out


def distortion(model: nn.Module, x: torch.Tensor, x_perturbed: torch.Tensor,
               layers: Iterable[str] | None = None, batch_size: int = 1000) -> Distortion:
    """Relative distortion per tap of one perturbed set (see :func:`compare`)."""
    return compare(model, x, {"perturbed": x_perturbed}, layers, batch_size)["perturbed"]


def amplification(adversarial: Distortion, random: Distortion, norm: str = "l2") -> dict[str, float]:
    """Per tap: mean adversarial distortion / mean random distortion ("input" included)."""
    a, r = adversarial.mean(norm), random.mean(norm)
    return {k: a[k] / r[k] if r[k] > 0 else float("inf") for k in a}


def random_noise(x: torch.Tensor, eps: float, kind: str = "sign", norm: str = "linf",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Random perturbation of the same size an attack with ``eps`` may use, clamped to [0, 1].

    Args:
        x: images (N, C, H, W) in [0, 1].
        eps: size in pixel units.
        kind: "sign" (each pixel +-eps: a corner of the Linf ball, as FGSM/PGD use) or
            "gaussian" (Gaussian direction rescaled so each example's ``norm`` equals eps).
        norm: "linf" or "l2" (for "sign" only "linf" applies).
    """
    check_images(x)
    check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
    check_choice("kind", kind, ("sign", "gaussian"))
    check_choice("norm", norm, ("linf", "l2"))
    if kind == "sign" and norm != "linf":
        raise ValueError("kind='sign' noise is an Linf-ball corner; use norm='linf' or kind='gaussian'")
    g = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if kind == "sign":
        delta = eps * g.sign()
    else:
        size = g.flatten(1).abs().amax(1) if norm == "linf" else g.flatten(1).norm(dim=1)
        delta = g * (eps / size).view(-1, 1, 1, 1)
    return (x + delta).clamp(0.0, 1.0)


def table(results: Mapping[str, Distortion], norm: str = "l2") -> list[dict[str, float | str]]:
    """Rows {"set", tap: "mean +- std"...} for printing or a DataFrame."""
    rows = []
    for name, res in results.items():
        m, s = res.mean(norm), res.std(norm)
        rows.append({"set": name, **{k: f"{m[k]:.3f} ± {s[k]:.3f}" for k in m}})
    return rows


def sweep(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eps_list: Iterable[float],
          attack_steps: int = 20, kinds: Iterable[str] = ("sign", "gaussian"), layers: Iterable[str] | None = None,
          seed: int = 0, progress: bool | None = None) -> dict[str, dict[float, dict[str, Distortion]]]:
    """For each model and eps: PGD (Linf, ``attack_steps``) vs random noise of the same Linf size.

    Returns ``results[model_name][eps][set]`` with sets "adversarial" and "random-<kind>".
    Noise is drawn from a generator seeded with ``seed``, and PGD's random start from torch's RNG seeded
    with it (the caller's RNG is restored), so the same call repeats exactly.
    ``progress``: a progress bar over the (model, eps) jobs (default: only in a live notebook, not under
    papermill, where a saved notebook would keep the bar's first frame, "0%", as its output).
    """
    from .attacks import PGD
    from tqdm.auto import tqdm
    check_number("attack_steps", attack_steps, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    eps_list = list(eps_list)
    for e in eps_list:
        check_number("eps_list[...]", e, low=0.0, high=1.0)
    eps_list = [float(e) for e in eps_list]
    out: dict[str, dict[float, dict[str, Distortion]]] = {}
    jobs = [(m, e) for m in models for e in eps_list]
    show = show_progress(progress)
    for name, eps in tqdm(jobs, desc="probe sweep", leave=False, disable=not show):
        model = models[name]
        g = torch.Generator().manual_seed(seed)
        dev = next(model.parameters()).device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)      # PGD's random start: the same call repeats exactly
            sets = {"adversarial": PGD(model, eps=eps, steps=attack_steps)(x, y).cpu()}
        for kind in kinds:
            sets[f"random-{kind}"] = random_noise(x, eps, kind=kind, generator=g)
        out.setdefault(name, {})[eps] = compare(model, x, sets, layers)
    return out


@torch.no_grad()
def centroid_accuracy(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> dict[str, float]:
    """Share (percent) of embeddings whose nearest class centroid is their own class.

    Centroids are the class means of the CLEAN embeddings; the share is measured for the clean and for
    the adversarial embeddings. A desensitised encoder keeps adversarial embeddings in their own class's
    region (AFD's claim); a standard one moves them into other classes' clusters (notebook 03).

    Args:
        model: a featlab model with ``embed``; x, x_adv: clean and perturbed images (N, C, H, W) in
            [0, 1] on any device; y: labels (N,).
    Returns: {"clean": percent, "adversarial": percent}.
    """
    check_model_input(model, x, name="x")
    check_model_input(model, x_adv, name="x_adv")
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if not hasattr(model, "embed"):
        raise TypeError("model must be a featlab model with embed(x)")
    device = model_device(model)
    with eval_mode(model):
        h = torch.cat([model.embed(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
        ha = torch.cat([model.embed(x_adv[i:i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(x), batch_size)])
    y = y.cpu()
    classes = torch.unique(y)
    centroids = torch.stack([h[y == c].mean(0) for c in classes])

    def share(emb: torch.Tensor) -> float:
        nearest = classes[torch.cdist(emb, centroids).argmin(1)]
        return 100.0 * (nearest == y).float().mean().item()
    return {"clean": share(h), "adversarial": share(ha)}


@torch.no_grad()
def embedding_activity(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """How many coordinates of the embedding are active (> 0) before its unit-length normalisation.

    A featlab encoder that ends in ``L2Normalize`` (the AFD code's choice) maps a ReLU embedding z to
    z / ||z||. Where a single coordinate of z is positive, that is the same one-hot vector for every
    nearby input: the logits stop depending on the pixels and the input gradient of any loss is zero (up
    to float rounding in the normalisation), so gradient attacks stall while a gradient-free one (Square)
    does not. With no active coordinate the embedding is zero, and as constant. Notebook 03 measures
    it for AFD, PGD-AT and TRADES with the same encoder.

    Args:
        model: a featlab model (``normalize`` and an ``encoder`` Sequential); x: images (N, C, H, W) in [0, 1].
    Returns: {"dim": embedding width, "median_active": median active coordinates per image,
        "one_active": percent of images with exactly one, "none_active": percent with none,
        "normalised": 1.0 if the encoder ends in ``L2Normalize`` (the counts are then taken before it)}.
    """
    check_model_input(model, x, name="x")
    check_number("batch_size", batch_size, low=1, integer=True)
    if not (hasattr(model, "encoder") and hasattr(model, "normalize") and isinstance(model.encoder, nn.Sequential)):
        raise TypeError("model must be a featlab model (normalize, and an encoder nn.Sequential)")
    stages = list(model.encoder.children())
    normalised = bool(stages) and isinstance(stages[-1], L2Normalize)
    trunk = nn.Sequential(*(stages[:-1] if normalised else stages))
    device = model_device(model)
    with eval_mode(model):
        z = [trunk(model.normalize(x[i:i + batch_size].to(device))).flatten(1) for i in range(0, len(x), batch_size)]
    active, dim = torch.cat([(zb > 0).sum(1).cpu() for zb in z]), int(z[0].shape[1])
    return {"dim": dim, "median_active": float(active.float().median()),
            "one_active": 100.0 * (active == 1).float().mean().item(),
            "none_active": 100.0 * (active == 0).float().mean().item(), "normalised": float(normalised)}


def bootstrap_interval(stat: Callable[..., torch.Tensor], *per_image: torch.Tensor, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``stat`` of the per-image means and its percentile bootstrap interval, the images resampled with
    replacement, one draw of indices for every array, so that measurements on the same images stay paired.

    ``stat`` takes one mean per array (each a tensor: a batch of resampled means, or the full-sample mean) and
    returns the statistic, e.g. ``lambda a, b: a / b`` (:func:`ratio_interval`), or notebook 01's edge ratio
    ``lambda sa, sr, ra, rr: (sa / sr) / (ra / rr)`` of two models' adversarial and noise distortions.

    Args:
        per_image: arrays of shape (N,), N >= 2, all on the same N images.
        n_boot: resamplings (default 1000); level: the interval's coverage in (0, 1) (default 0.95);
        seed: the resampling's generator (the same call repeats exactly).
    Returns: (value, low, high). Introduced in notebooks/01_feature_noise.ipynb.
    """
    arrays = [torch.as_tensor(a).detach().double().cpu() for a in per_image]
    if not arrays or any(a.dim() != 1 for a in arrays) or len({len(a) for a in arrays}) != 1 or len(arrays[0]) < 2:
        raise ValueError(f"per_image must be per-image values of one length N >= 2 (shape (N,)), got shapes "
                         f"{[tuple(a.shape) for a in arrays]}")
    check_number("n_boot", n_boot, low=1, integer=True)
    check_number("level", level, low=0.0, high=1.0, low_open=True)
    if level == 1.0:
        raise ValueError("level must be > 0 and < 1 (the interval's coverage), got 1.0")
    check_number("seed", seed, low=0, integer=True)
    n = len(arrays[0])
    idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    boot = torch.as_tensor(stat(*(a[idx].mean(1) for a in arrays)), dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=boot.dtype)
    low, high = torch.quantile(boot, q).tolist()
    return float(stat(*(a.mean() for a in arrays))), low, high


def ratio_interval(a: torch.Tensor, b: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` and its percentile bootstrap interval, the images resampled in pairs
    (:func:`bootstrap_interval` of the ratio).

    For two per-image measurements on the same images (e.g. two models' relative distortion at a tap,
    each of shape (N,) from :class:`Distortion`), the ratio of their means and the ``level`` interval
    of that ratio over ``n_boot`` resamplings of the images with replacement. One draw of indices serves
    both arrays, so an image's two numbers stay together. An interval that excludes 1 says the gap is
    larger than the choice of images explains (the attack's and the noise's randomness are not resampled).

        >>> value, low, high = ratio_interval(res_std["adversarial"].l2["embedding"],
        ...                                   res_afd["adversarial"].l2["embedding"])

    Args:
        a, b: per-image values, shape (N,) with N >= 2, mean of b non-zero.
        n_boot: resamplings (default 1000); level: the interval's coverage in (0, 1) (default 0.95);
        seed: the resampling's generator (the same call repeats exactly).
    Returns: (ratio, low, high). Introduced in notebooks/03_afd.ipynb.
    """
    a, b = torch.as_tensor(a).detach().double().cpu(), torch.as_tensor(b).detach().double().cpu()
    if a.dim() != 1 or b.dim() != 1 or len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a and b must be per-image values of the same length N >= 2 (shape (N,)), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if float(b.mean()) == 0.0:
        raise ValueError("b has mean 0: the ratio mean(a) / mean(b) is undefined")
    return bootstrap_interval(lambda p, q: p / q, a, b, n_boot=n_boot, level=level, seed=seed)


class Change(str, enum.Enum):
    """What the interval of a ratio (value, low, high) says (:func:`change`): clearly up or down, a small
    change up or down, or no measurable change. A ``str``, so it prints and records as its value."""
    UP = "up"
    SMALL_UP = "small up"
    NONE = "no measurable change"
    SMALL_DOWN = "small down"
    DOWN = "down"

    def __str__(self) -> str:
        return self.value


#: a ratio whose interval ends within this factor of 1 (its end nearest 1 in (1/SMALL_FACTOR, SMALL_FACTOR))
#: is a small change: the data cannot rule out a change under 10%
SMALL_FACTOR = 1.1

#: the words :func:`describe_change` uses by default, for a ratio "from A to B" (B / A)
CHANGE_WORDS = {Change.UP: "grows", Change.SMALL_UP: "grows slightly, a small effect",
                Change.NONE: "shows no measurable change", Change.SMALL_DOWN: "shrinks slightly, a small effect",
                Change.DOWN: "shrinks"}


def _check_ratio_ci(ci: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        value, low, high = (float(v) for v in ci)
    except (TypeError, ValueError):
        raise ValueError(f"ci must be (value, low, high), three numbers (ratio_interval's result), "
                         f"got {ci!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in (value, low, high)) or low > high:
        raise ValueError(f"ci must be (value, low, high): finite ratios >= 0 with low <= high, got {ci!r}")
    return value, low, high


def change(ci: tuple[float, float, float], small: float = SMALL_FACTOR) -> Change:
    """Classify a ratio by its interval, as :func:`ratio_interval` returns it.

    * the interval contains 1 (``low <= 1 <= high``): :attr:`Change.NONE`, whatever the value;
    * it lies above 1 and the value too: :attr:`Change.UP`, or :attr:`Change.SMALL_UP` when ``low`` is
      below ``small`` (the interval barely clears 1: it cannot rule out a change smaller than that factor);
    * below 1, the same way round: :attr:`Change.DOWN`, or :attr:`Change.SMALL_DOWN` when ``high`` is above
      ``1 / small``.

    A value on the other side of 1 from an interval that excludes 1 (possible with a percentile bootstrap
    of skewed data) gives no direction: :attr:`Change.NONE`.

        >>> change((1.04, 1.005, 1.073))
        <Change.SMALL_UP: 'small up'>

    Args: ci: (value, low, high), ratios >= 0; small: the factor (> 1) under which a change is small
    (default :data:`SMALL_FACTOR`, 1.1). Introduced in notebooks/01_feature_noise.ipynb.
    """
    value, low, high = _check_ratio_ci(ci)
    check_number("small", small, low=1.0, low_open=True)
    if low > 1 and value > 1:
        return Change.SMALL_UP if low < small else Change.UP
    if high < 1 and value < 1:
        return Change.SMALL_DOWN if high > 1 / small else Change.DOWN
    return Change.NONE


def describe_change(ci: tuple[float, float, float], words: Mapping[Change, str] | None = None,
                    small: float = SMALL_FACTOR, level: float = 0.95) -> str:
    """The word :func:`change` picks for ``ci`` (from :data:`CHANGE_WORDS`, or ``words``, which may replace
    some or all of them), then the ratio and its interval: "grows (1.94x, 95% interval 1.90-1.98)". The
    interval gets a third digit when two would not show on which side of 1 it ends.

    Args: ci: (value, low, high) from :func:`ratio_interval`; words: :class:`Change` -> text; small: as
    :func:`change`; level: the interval's coverage, for the text (default 0.95).
    Introduced in notebooks/01_feature_noise.ipynb.
    """
    value, low, high = _check_ratio_ci(ci)
    check_number("level", level, low=0.0, high=1.0, low_open=True)
    words = dict(words or {})
    unknown = [k for k in words if k not in set(Change)]
    if unknown:
        raise ValueError(f"words: keys must be featlab.probe.Change members {[c.name for c in Change]}, "
                         f"got {unknown!r}")
    text = {**CHANGE_WORDS, **{Change(k): v for k, v in words.items()}}[change(ci, small)]
    return f"{text} ({format_ratio(ci, level)})"


def format_ratio(ci: tuple[float, float, float], level: float | None = 0.95) -> str:
    """A ratio and its interval for a table cell: "1.94x, 95% interval 1.90-1.98" (``level=None``: "1.94x
    (1.90-1.98)"). The interval gets a third digit when two would not show on which side of 1 it ends."""
    value, low, high = _check_ratio_ci(ci)
    d = 3 if min(abs(low - 1), abs(high - 1)) < 0.005 else 2
    if level is None:
        return f"{value:.2f}x ({low:.{d}f}-{high:.{d}f})"
    check_number("level", level, low=0.0, high=1.0, low_open=True)
    return f"{value:.2f}x, {100 * level:g}% interval {low:.{d}f}-{high:.{d}f}"
