"""ipywidgets explorers, each with a static fallback for papermill and rendered notebooks."""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from . import data
from ._utils import (check_choice, check_labels, check_model_input, check_number, eval_mode, model_device,
                     show_progress)
from .attacks import FGSM, PGD, Attack
from .metrics import predict, robust_correct
from .models import Defended
from .nbtools import running_unattended
from .probe import INPUT_TAP, compare, random_noise
from .viz import log_ticks, plot_distortion, plot_feature_grid


def _check_models_and_data(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
    """An explorer's models and images, checked before any widget exists (every model against x)."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models: a non-empty dict name -> model is needed, got {type(models).__name__}")
    for name, m in models.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{name!r}]: a torch model is needed, got {type(m).__name__}")
        check_model_input(m, x, name="x")
    k = getattr(next(iter(models.values())), "num_classes", None)
    check_labels(y, len(x), k, name="y")


class FeatureNoiseExplorer:
    """Eps slider + tap and model dropdowns: distortion-vs-depth curves (adversarial vs random noise, every
    model) and the chosen model's feature maps of one image at the chosen tap, recomputed on release of the
    slider and cached per eps. Unattended (papermill, a rendered notebook) it draws what the curves of a
    notebook's own sections do not: every model's maps of that image side by side on one difference scale
    (:meth:`maps_figure`). Introduced in notebooks/01_feature_noise.ipynb.

    Args:
        models: name -> featlab model (e.g. {"standard": m1, "PGD-AT": m2}).
        x, y: a small batch of clean images (N, C, H, W) in [0, 1] and labels (N,).
        eps_values: the slider's stops (Linf, pixel units).
        attack_steps: PGD steps (default 10).
        image_index: which image of the batch the feature maps show (default 0).
        dataset: writes eps as that dataset does (:func:`featlab.data.format_eps`: 8/255 on CIFAR);
            None (default): plain numbers.
    """

    def __init__(self, models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                 eps_values: Sequence[float], attack_steps: int = 10, image_index: int = 0, seed: int = 0,
                 dataset: str | None = None):
        _check_models_and_data(models, x, y)
        if dataset is not None:
            check_choice("dataset", dataset, data.DATASETS)
        self.dataset = dataset
        self.models, self.x, self.y = dict(models), x, y
        if isinstance(eps_values, (str, bytes)) or not isinstance(eps_values, Sequence) or not eps_values:
            raise ValueError(f"eps_values: a non-empty list of numbers in [0, 1] is needed, got {eps_values!r}")
        for e in eps_values:
            check_number("eps_values[...]", e, low=0.0, high=1.0)
        self.eps_values = [float(e) for e in eps_values]
        check_number("attack_steps", attack_steps, low=1, integer=True)
        check_number("image_index", image_index, low=0, high=len(x) - 1, integer=True)
        self.attack_steps, self.image_index, self.seed = attack_steps, image_index, seed
        first = next(iter(self.models.values()))
        with eval_mode(first), torch.no_grad():
            shapes = {k: v.dim() for k, v in first.features(x[:1].to(model_device(first))).items()}
        self.spatial_taps = [k for k, d in shapes.items() if d == 4]
        self._cache: dict[float, dict] = {}

    def eps_label(self, eps: float) -> str:
        return data.format_eps(eps, self.dataset) if self.dataset else f"{eps:.3g}"

    def compute(self, eps: float) -> dict:
        """{model: {"distortion": {set: Distortion}, "x_adv": tensor}} for one eps (cached)."""
        check_number("eps", eps, low=0.0, high=1.0)
        if eps not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            noise = random_noise(self.x, eps, kind="sign", generator=g)
            res = {}
            for name, m in self.models.items():
                x_adv = PGD(m, eps=eps, steps=self.attack_steps)(
                    self.x, self.y).cpu()
                res[name] = {"distortion": compare(m, self.x, {"adversarial": x_adv, "random": noise}),
                             "x_adv": x_adv}
            self._cache[eps] = res
        return self._cache[eps]

    def _check_view(self, tap: str, model: str | None = None) -> str:
        if tap not in self.spatial_taps:
            raise ValueError(f"tap must be one of the spatial taps {self.spatial_taps}, got {tap!r}")
        name = next(iter(self.models)) if model is None else model
        if name not in self.models:
            raise ValueError(f"model must be one of {list(self.models)}, got {model!r}")
        return name

    def feature_maps(self, eps: float, tap: str, model: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, adversarial) maps (C, H, W) of image ``image_index`` at ``tap`` for ``model`` (default: the
        first), the adversarial image being PGD against that model at ``eps`` (:meth:`compute`)."""
        name = self._check_view(tap, model)
        m, i = self.models[name], self.image_index
        x_adv, dev = self.compute(eps)[name]["x_adv"], model_device(m)
        with eval_mode(m), torch.no_grad():
            clean = m.features(self.x[i:i + 1].to(dev), [tap])[tap][0].float().cpu()
            adv = m.features(x_adv[i:i + 1].to(dev), [tap])[tap][0].float().cpu()
        return clean, adv

    def figure(self, eps: float, tap: str, model: str | None = None):
        """What the widget shows: left, every model's distortion curves (solid: PGD against that model,
        dashed: sign noise); right, ``model``'s feature maps of one image (default: the first model)."""
        name = self._check_view(tap, model)
        res = self.compute(eps)
        fig = plt.figure(figsize=(13, 4.2))
        left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.1])
        ax = left.subplots()
        curves, styles = {}, {}
        for i, (n, r) in enumerate(res.items()):
            for s, d in r["distortion"].items():
                curves[f"{n}: {s}"] = d
                styles[f"{n}: {s}"] = {"linestyle": "-" if s == "adversarial" else "--", "color": f"C{i}"}
        plot_distortion(curves, ax=ax, styles=styles, title=f"relative L2 distortion, eps = {self.eps_label(eps)}")
        clean, adv = self.feature_maps(eps, tap, name)
        plot_feature_grid(clean, adv, channels=6, title=f"{name}, tap {tap}, image {self.image_index}", fig=right)
        return fig

    def maps_figure(self, eps: float, tap: str, channels: int = 6):
        """Every model's feature maps of image ``image_index`` at ``tap``, side by side, each model under its
        own PGD at ``eps``: rows clean / adversarial / |difference|, first the input image itself (its third row
        the pixel change |x_adv - x| / eps, white = the whole budget), then the ``channels`` most-changed channels of
        each model. Clean and adversarial share a scale within a model. The difference rows share ONE scale
        across models, the change as a fraction of that model's largest clean activation at the tap, so a model
        whose maps barely move shows dark rows (a per-panel scale would make every model's look alike). Each
        model's title gives the image's relative L2 distortion at the tap (:meth:`compute`)."""
        check_number("channels", channels, low=1, integer=True)
        self._check_view(tap)
        res, i = self.compute(eps), self.image_index
        maps = {name: self.feature_maps(eps, tap, name) for name in self.models}
        rel = {name: (a - c).abs() / c.abs().max().clamp_min(1e-12) for name, (c, a) in maps.items()}
        dmax = max(float(r.max()) for r in rel.values()) or 1.0
        n = min(channels, *(c.shape[0] for c, _ in maps.values()))
        # one band of three rows per model, stacked: side by side, two models of seven columns made a figure 20
        # inches wide, shrunk on the page until its labels could not be read
        fig = plt.figure(figsize=(1.3 * (n + 1) + 1.8, 3.5 * len(maps) + 0.5), layout="constrained")
        x = self.x[i].detach().cpu().float()
        for sub, (name, (clean, adv)) in zip(fig.subfigures(len(maps), 1, squeeze=False)[:, 0], maps.items()):
            order = rel[name].flatten(1).sum(1).argsort(descending=True)[:n].tolist()
            vmax = float(torch.maximum(clean[order].max(), adv[order].max())) or 1.0
            axes = sub.subplots(3, n + 1, squeeze=False)
            # column 0: the input itself, clean and under this model's attack, and |x_adv - x| / eps in grey
            x_adv = res[name]["x_adv"][i].float()
            pixels = (x, x_adv, (x_adv - x).abs().amax(0, keepdim=True) / max(eps, 1e-12))
            for r, img in enumerate(pixels):
                axes[r][0].imshow(img.clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
                axes[r][0].set_xticks([]), axes[r][0].set_yticks([])
            axes[0][0].set_title("input", fontsize=9)
            axes[2][0].set_title("|x_adv - x| / eps", fontsize=8)
            for j, ch in enumerate(order, start=1):
                for r, (img, label) in enumerate(((clean, "clean"), (adv, "adversarial"), (rel[name], "|diff|"))):
                    diff = r == 2
                    im = axes[r][j].imshow(img[ch].numpy(), cmap="magma" if diff else "viridis", vmin=0,
                                           vmax=dmax if diff else vmax)
                    axes[r][j].set_xticks([]), axes[r][j].set_yticks([])
                    axes[r][0].set_ylabel(label, fontsize=9)
                axes[0][j].set_title(f"ch {ch}", fontsize=9)
            d = float(res[name]["distortion"]["adversarial"].l2[tap][i])
            sub.suptitle(f"{name}: relative L2 distortion {d:.2f}", fontsize=11)
            sub.colorbar(im, ax=axes[2, 1:].tolist(), shrink=0.9, label="|diff| / largest clean\nactivation (one scale)")
        fig.suptitle(f"tap {tap}, image {i}, eps {self.eps_label(eps)}, each model under its own "
                     f"PGD-{self.attack_steps}")
        return fig

    def static(self, tap: str | None = None, eps: float | None = None) -> None:
        """What papermill and a rendered notebook show: :meth:`maps_figure` at ``eps`` (default: the largest
        of ``eps_values``) and ``tap`` (default: the deepest spatial tap). The curves are left to the live
        widget: a notebook draws them on all its images in its own sections."""
        from IPython.display import display
        fig = self.maps_figure(max(self.eps_values) if eps is None else eps, tap or self.spatial_taps[-1])
        display(fig)
        plt.close(fig)

    def widget(self, tap: str | None = None):
        import ipywidgets as w
        from IPython.display import display
        slider = w.SelectionSlider(options=[(self.eps_label(e), e) for e in self.eps_values], value=self.eps_values[0],
                                   description="eps", continuous_update=False)
        start = tap or self.spatial_taps[-1]
        self._check_view(start)
        taps = w.Dropdown(options=self.spatial_taps, value=start, description="tap")
        model = w.Dropdown(options=list(self.models), value=next(iter(self.models)), description="maps of")
        out = w.Output()

        def redraw(*_):
            fig = self.figure(slider.value, taps.value, model.value)
            with out:
                out.clear_output(wait=True)
                display(fig)
            plt.close(fig)

        for control in (slider, taps, model):
            control.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([slider, taps, model]), out])

    def show(self, tap: str | None = None, eps: float | None = None) -> None:
        """The live widget in a notebook frontend (starting at ``tap``); unattended, :meth:`static`
        (``tap``, ``eps``)."""
        from IPython.display import display
        if running_unattended():
            self.static(tap, eps)
        else:
            display(self.widget(tap))


ATTACK_CHOICES = ("FGSM", "PGD Linf", "PGD L2")


class Outcome(str, enum.Enum):
    """What an attack did to one image (:func:`outcome`): moved a correctly classified image off its label,
    left the prediction on the label, or found the model wrong on the clean image already (nothing to attack).
    A ``str``, so it prints and stores (``featlab.nbtools.record``) as its value."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    NOT_NEEDED = "NOT NEEDED"

    def __str__(self) -> str:
        return self.value


SUCCEEDED, FAILED, NOT_NEEDED = Outcome.SUCCEEDED, Outcome.FAILED, Outcome.NOT_NEEDED


# -- the explorer's work as plain functions: no widgets, so tests and notebooks call them directly --------------
def make_attack(model: nn.Module, attack: str, eps: float, steps: int = 10) -> Attack:
    """The attack the explorer runs, by its menu name.

    * "FGSM": one signed-gradient step of size ``eps`` (Goodfellow et al. 2015); ``steps`` is unused.
    * "PGD Linf": featlab's :class:`~featlab.attacks.PGD`, ``steps`` signed steps of 2.5 eps / steps from a
      random start, each projected back into the Linf ball (every pixel within ``eps`` of the original).
    * "PGD L2": the same in the L2 ball (the perturbation's Euclidean length at most ``eps``).

    ``eps`` in pixel units (images in [0, 1]).
    """
    if attack not in ATTACK_CHOICES:
        raise ValueError(f"attack must be one of {list(ATTACK_CHOICES)}, got {attack!r}")
    if attack == "FGSM":
        return FGSM(model, eps=eps)
    return PGD(model, eps=eps, steps=steps, norm="linf" if attack == "PGD Linf" else "l2")


def attributions(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, target_clean: int, target_adv: int,
                 ig_steps: int = 64) -> dict[str, torch.Tensor]:
    """captum Integrated Gradients and Saliency maps (H, W) for one clean image x (1, C, H, W) and its
    adversarial x_adv, each for the class the model predicts on that input (``target_clean``, ``target_adv``).

    Keys "ig/clean", "ig/adv" (IG from a black baseline), "ig_grey/..." (from mid-grey, 0.5) and
    "saliency/...". IG (Sundararajan et al. 2017) multiplies (input - baseline) by the gradient averaged
    over ``ig_steps`` points on the straight path from the baseline to the input, summed over channels:
    signed, positive = evidence for the target class. From black, a pixel that is black in the input gets
    zero attribution by construction (input - baseline = 0), so on MNIST's black background the clean
    image's attribution sits on the strokes whatever the model does; the grey baseline has no such blind
    spot. Saliency is |gradient of the target's logit|, the largest over channels.
    """
    from captum.attr import IntegratedGradients, Saliency
    check_number("ig_steps", ig_steps, low=1, integer=True)
    with eval_mode(model):
        ig, sal = IntegratedGradients(model), Saliency(model)
        out = {}
        for tag, inp, t in (("clean", x, target_clean), ("adv", x_adv, target_adv)):
            inp = inp.detach().clone().requires_grad_(True)
            out[f"ig/{tag}"] = ig.attribute(inp, target=t, n_steps=ig_steps).sum(1)[0].detach().cpu()
            out[f"ig_grey/{tag}"] = ig.attribute(inp, baselines=torch.full_like(inp, 0.5), target=t,
                                                 n_steps=ig_steps).sum(1)[0].detach().cpu()
            out[f"saliency/{tag}"] = sal.attribute(inp, target=t, abs=True).amax(1)[0].detach().cpu()
    return out


def completeness_gap(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: int,
                     baseline: float = 0.0) -> float:
    """How far one IG map is from IG's completeness axiom (Sundararajan et al. 2017): the attributions of an
    input add up to the target's score (logit) at the input minus at the baseline. Returns
    ``|sum(attribution) - (F(x) - F(baseline))| / |F(x) - F(baseline)|`` (captum's convergence delta, relative):
    near 0 when the path integral's ``ig_steps`` points were enough; exactly 0 for a linear model.

    Args: model: the classifier the map explains; x: the input (1, C, H, W) in [0, 1]; attribution: its IG map
    (summed over channels, as :func:`attributions` returns it; any shape, only its sum counts); target: the
    class it explains; baseline: the baseline's pixel value (0.0 black, 0.5 grey, as :func:`attributions`).
    """
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"x must be one image of shape (1, C, H, W), got shape {tuple(x.shape)}")
    check_number("baseline", baseline, low=0.0, high=1.0)
    dev = model_device(model)
    x = x.to(dev)
    with eval_mode(model), torch.no_grad():
        scores = model(torch.cat([x, torch.full_like(x, baseline)]))[:, int(target)].double().cpu()
    change = float(scores[0] - scores[1])
    return abs(float(attribution.double().sum()) - change) / max(abs(change), 1e-12)


def attribution_similarity(res: Mapping, method: str = "ig_grey") -> float:
    """Cosine similarity of the clean and the adversarial |attribution| maps of one :func:`explore` result
    (``method``: "ig", "ig_grey" or "saliency"): 1 when the same pixels matter, in the same proportions."""
    check_choice("method", method, tuple(_ATTR_NAMES))
    a, b = (res["attributions"][f"{method}/{tag}"].abs().flatten().double() for tag in ("clean", "adv"))
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def feature_distortion(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float] | None:
    """Mean relative L2 distortion ||f(x_adv) - f(x)|| / ||f(x)|| per tap, "input" (the pixels) first
    (:func:`featlab.probe.compare`).

    A featlab model: its own taps. A :class:`~featlab.models.Defended` pipeline (a denoiser in front of a
    featlab classifier): "input", then "denoised" (the denoiser's output for x_adv against its output for x),
    then the classifier's taps on the denoised images: how much of the perturbation the denoiser lets
    through, layer by layer. None for a model without taps (nothing to show).
    Shapes: x, x_adv (N, C, H, W) in [0, 1]; each value is the mean over the N images.
    """
    if hasattr(model, "features"):
        return compare(model, x, {"adv": x_adv})["adv"].mean()
    if isinstance(model, Defended) and hasattr(model.classifier, "features"):
        with eval_mode(model), torch.no_grad():
            d_clean, d_adv = model.denoiser(x), model.denoiser(x_adv)
        inner = compare(model.classifier, d_clean, {"adv": d_adv})["adv"].mean()
        pixels = (x_adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)   # per image
        return {INPUT_TAP: float(pixels.mean()), "denoised": inner.pop(INPUT_TAP), **inner}
    return None


def explore(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str = "PGD Linf", eps: float = 0.3,
            steps: int = 10, ig_steps: int = 64) -> dict:
    """Attack one image and say what happened: everything :class:`AttackExplorer` shows for one setting.

    Args:
        model: a classifier on [0, 1] images (a featlab model, a ``Defended`` pipeline...).
        x, y: one image (1, C, H, W) in [0, 1] and its label (1,).
        attack, eps, steps: as :func:`make_attack` (eps in pixel units).
        ig_steps: path points of Integrated Gradients (:func:`attributions`).

    Returns a dict: "attack", "eps" (as given); "x", "x_adv" (1, C, H, W) on the CPU; "p_clean", "p_adv" (K,) softmax probabilities;
    "label", "pred_clean", "pred_adv" (class indices); "attributions" (:func:`attributions`); "ig_gap": the
    :func:`completeness_gap` of each IG map ("ig/clean", "ig/adv", "ig_grey/clean", "ig_grey/adv");
    "distortion" (:func:`feature_distortion`; None at eps 0 or for a model without taps).
    """
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"x must be one image of shape (1, C, H, W), got shape {tuple(x.shape)}")
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    x_adv = make_attack(model, attack, eps, steps)(x, y)
    with eval_mode(model), torch.no_grad():
        p_clean, p_adv = torch.softmax(model(x), 1)[0].cpu(), torch.softmax(model(x_adv), 1)[0].cpu()
    pred_clean, pred_adv = int(p_clean.argmax()), int(p_adv.argmax())
    maps = attributions(model, x, x_adv, pred_clean, pred_adv, ig_steps)
    gaps = {f"{method}/{tag}": completeness_gap(model, inp, maps[f"{method}/{tag}"], t, base)
            for method, base in (("ig", 0.0), ("ig_grey", 0.5))
            for tag, inp, t in (("clean", x, pred_clean), ("adv", x_adv, pred_adv))}
    return {"attack": attack, "eps": float(eps), "x": x.cpu(), "x_adv": x_adv.cpu(), "p_clean": p_clean, "p_adv": p_adv, "label": int(y),
            "pred_clean": pred_clean, "pred_adv": pred_adv, "attributions": maps, "ig_gap": gaps,
            "distortion": feature_distortion(model, x, x_adv) if eps > 0 else None}


def outcome(res: Mapping) -> Outcome:
    """:data:`SUCCEEDED` when the attack moved a correctly classified image off its label, :data:`FAILED`
    when the prediction stayed on the label, :data:`NOT_NEEDED` when the clean image was misclassified."""
    if res["pred_clean"] != res["label"]:
        return NOT_NEEDED
    return FAILED if res["pred_adv"] == res["label"] else SUCCEEDED


def summary_line(res: Mapping, classes: Sequence[str]) -> str:
    """One line: true label, prediction and confidence before and after, and the :func:`outcome`."""
    c, what = classes, outcome(res)
    return (f"label {c[res['label']]} | clean: {c[res['pred_clean']]} ({100 * res['p_clean'].max():.1f}%) | "
            f"adversarial: {c[res['pred_adv']]} ({100 * res['p_adv'].max():.1f}%) | attack {what}"
            + (" (the clean image is misclassified already)" if what == NOT_NEEDED else ""))


class FlipPoint(NamedTuple):
    """:meth:`AttackExplorer.flip_eps`: the largest eps seen to fail and the smallest seen to flip the image."""
    survived: float | None
    flipped: float | None


@dataclass(frozen=True)
class SuccessCurve:
    """Attack success per eps (:func:`success_rates`): ``rates[i]`` percent of the ``n`` images the model
    classified correctly that the attack at ``eps[i]`` moved off their label."""
    eps: tuple[float, ...]
    rates: tuple[float, ...]
    n: int


def success_rates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
                  attack: str = "PGD Linf", steps: int = 10, attack_model: nn.Module | None = None,
                  progress: bool | None = None, desc: str = "success curve", seed: int = 0) -> SuccessCurve:
    """How often ``attack`` succeeds on ``model``, per eps: of the images in (x, y) that ``model`` classifies
    correctly, the percentage the attack moves off their label (images it gets wrong clean are left out:
    nothing to attack). eps 0 is 0% without running anything.

    Counted as every featlab accuracy is (:func:`featlab.metrics.robust_correct`, seeded by ``seed``): an
    image is flipped when any PGD iterate fools the model, and a fooled image costs no more gradients.

    ``attack_model``: compute the adversarial images against this model and show them to ``model``
    (default: ``model`` itself, the attacker who sees everything). With the classifier alone in front of
    which ``model`` puts a denoiser, this is the *oblivious* attacker, who ignores the defense.
    ``progress``: a progress bar (default: only in a live notebook, not under papermill).
    Shapes: x (N, C, H, W) in [0, 1], y (N,).
    """
    from tqdm.auto import tqdm
    for e in eps_list:
        check_number("eps_list[...]", e, low=0.0, high=1.0 if attack != "PGD L2" else None)
    source = model if attack_model is None else attack_model
    ok = predict(model, x) == y.cpu()
    xs, ys = x.cpu()[ok], y.cpu()[ok]
    rates, show = [], show_progress(progress)
    for eps in tqdm(eps_list, desc=desc, leave=False, disable=not show):
        if eps == 0 or len(xs) == 0:
            rates.append(0.0)
            continue
        robust = robust_correct(model, xs, ys, make_attack(source, attack, eps, steps), progress=False, seed=seed)
        rates.append(100.0 * (1.0 - robust.float().mean().item()))
    return SuccessCurve(tuple(float(e) for e in eps_list), tuple(rates), int(ok.sum()))


def noise_rates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], kind: str = "sign",
                seed: int = 0) -> SuccessCurve:
    """The control of :func:`success_rates`: how often random noise of the same size (:func:`featlab.probe.random_noise`,
    ``kind`` "sign": every pixel moved by +eps or -eps, a corner of the Linf ball the attack searches) moves an image
    ``model`` classifies correctly off its label, per eps. One generator seeded with ``seed`` draws the noise for
    every eps in turn, so the curve is reproducible. Shapes: x (N, C, H, W) in [0, 1], y (N,)."""
    for e in eps_list:
        check_number("eps_list[...]", e, low=0.0, high=1.0)
    check_number("seed", seed, low=0, integer=True)
    ok = predict(model, x) == y.cpu()
    xs, ys, g = x.cpu()[ok], y.cpu()[ok], torch.Generator().manual_seed(seed)
    rates = [100.0 * float((predict(model, random_noise(xs, e, kind, generator=g)) != ys).float().mean())
             if len(xs) else 0.0 for e in eps_list]
    return SuccessCurve(tuple(float(e) for e in eps_list), tuple(rates), int(ok.sum()))


# -- figures of explorer results ------------------------------------------------------------------------------
_ATTR_NAMES = {"ig": "IG, black baseline", "ig_grey": "IG, grey baseline", "saliency": "Saliency"}


def _image(t: torch.Tensor):
    return t[0].permute(1, 2, 0).squeeze(-1).clip(0, 1).numpy()


def _attribution_panel(ax, a: torch.Tensor, kind: str) -> None:
    """One attribution map on its own symmetric scale (IG signed: red adds to the class score, blue takes from it;
    Saliency: |gradient|), with a colorbar that gives the scale, since each panel has its own."""
    lim = float(a.abs().max()) or 1.0
    signed = kind != "saliency"
    im = ax.imshow(a.numpy(), cmap="RdBu_r" if signed else "hot", vmin=-lim if signed else 0, vmax=lim)
    ax.set_xticks([]), ax.set_yticks([])
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[-lim, 0, lim] if signed else [0, lim])
    bar.ax.tick_params(labelsize=7)
    bar.ax.set_yticklabels([f"{t:.2g}" for t in ([-lim, 0, lim] if signed else [0, lim])])


#: the top-5 panel's axis starts here in every figure, so that figures side by side compare; a probability below it
#: gets no bar and a "<1e-12" mark
P_MIN = 1e-12


def _top5_panel(ax, res: Mapping, classes: Sequence[str]) -> None:
    """The five most probable classes (clean + adversarial) before and after, on a log probability axis from
    :data:`P_MIN` to 1, the same in every figure: a confident model puts almost all of its mass on one or two
    classes, so a linear axis leaves the other rows empty; the log axis shows how far each class is from zero, and
    how far the label falls when an attack succeeds."""
    top5 = torch.topk(res["p_clean"] + res["p_adv"], 5).indices.tolist()
    pos = torch.arange(5)
    for shift, key, lab in ((-0.2, "p_clean", "clean"), (0.2, "p_adv", "adversarial")):
        probs = [float(res[key][i]) for i in top5]
        bars = ax.barh(pos + shift, [max(v, P_MIN) - P_MIN for v in probs], 0.4, left=P_MIN, label=lab)
        for y, v in zip((pos + shift).tolist(), probs):
            if v < P_MIN:          # below the axis: said, not drawn as if it were P_MIN
                ax.text(P_MIN * 1.5, y, f"<{P_MIN:.0e}", va="center", fontsize=6, color=bars.patches[0].get_facecolor())
    ax.set_yticks(pos.tolist(), [classes[i] + (" (label)" if i == res["label"] else "") for i in top5], fontsize=8)
    ax.set_xscale("log"), ax.set_xlim(P_MIN, 1), ax.invert_yaxis()
    ax.set_xticks([1e-12, 1e-9, 1e-6, 1e-3, 1])
    ax.set_xlabel("probability (log scale)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7), ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right"), ax.set_title("top-5 classes", fontsize=9)


def explorer_figure(res: Mapping, classes: Sequence[str], title: str | None = None, amp: float | None = None):
    """One explorer result (:func:`explore`) as a figure. Top: clean image, adversarial image, the
    perturbation (amplified, grey = 0), the top-5 class probabilities before and after (log axis), the feature
    distortion per tap. Bottom: IG from black and from grey, and Saliency, for the clean and the adversarial
    image, each for the class predicted on it (red: evidence for that class, blue: against). ``amp``: the pixel
    change drawn as full white (+) or black (-); None: this perturbation's largest. A fixed ``amp`` (and the fixed
    distortion axis, 0.01 to 3 unless a value lies beyond) keeps figures at several eps comparable (a change beyond
    ``amp`` is drawn at full black or white)."""
    fig = plt.figure(figsize=(13, 5.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1])
    axes = top.subplots(1, 5, width_ratios=[1, 1, 1, 1.5, 1.5])
    delta = res["x_adv"] - res["x"]
    amp = amp or float(delta.abs().max()) or 1.0
    c = classes
    for ax, t, lab in ((axes[0], res["x"], f"clean: {c[res['pred_clean']]}"),
                       (axes[1], res["x_adv"], f"adversarial: {c[res['pred_adv']]}"),
                       (axes[2], (delta / (2 * amp) + 0.5).clamp(0, 1), f"x_adv - x: black -{amp:.2g}, grey 0, white +{amp:.2g}")):
        ax.imshow(_image(t), cmap="gray", vmin=0, vmax=1)
        ax.set_title(lab, fontsize=9), ax.set_xticks([]), ax.set_yticks([])
    _top5_panel(axes[3], res, c)
    ax = axes[4]
    d = res["distortion"]
    if d:
        ax.plot(range(len(d)), list(d.values()), marker="o")
        ax.set_xticks(range(len(d)), list(d), rotation=60, fontsize=7), ax.set_yscale("log")
        ax.set_ylim(min(0.01, 0.8 * min(d.values())), max(3.0, 1.25 * max(d.values()))), log_ticks(ax)
        ax.set_xlabel("tap (input -> logits)", fontsize=8), ax.set_ylabel("relative L2 distortion", fontsize=8)
        ax.tick_params(axis="y", labelsize=7), ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no perturbation (eps 0)" if res["x_adv"].equal(res["x"]) else "this model has no taps",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
    ax.set_title("feature distortion", fontsize=9)
    axes = bottom.subplots(1, 6)
    for ax, key in zip(axes, ("ig/clean", "ig/adv", "ig_grey/clean", "ig_grey/adv", "saliency/clean", "saliency/adv")):
        kind, tag = key.split("/")
        _attribution_panel(ax, res["attributions"][key], kind)
        target = c[res["pred_clean" if tag == "clean" else "pred_adv"]]
        ax.set_title(f"{_ATTR_NAMES[kind]}\n{'clean' if tag == 'clean' else 'adversarial'}, for {target}", fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


def attribution_figure(results: Mapping[str, Mapping], classes: Sequence[str], title: str | None = None):
    """Several models' results on the same image (name -> :func:`explore` result), one row per model:
    the adversarial image, IG from black and from grey on the clean image, IG from grey and Saliency on the
    adversarial image, each for the class the model predicts on that input."""
    cols = (("x_adv", "adversarial image"), ("ig/clean", "IG, black baseline\nclean"),
            ("ig_grey/clean", "IG, grey baseline\nclean"), ("ig_grey/adv", "IG, grey baseline\nadversarial"),
            ("saliency/clean", "Saliency\nclean"), ("saliency/adv", "Saliency\nadversarial"))
    fig, axes = plt.subplots(len(results), len(cols), figsize=(2.1 * len(cols), 2.3 * len(results) + 0.5),
                             squeeze=False, layout="constrained")
    axes_rows = list(axes)
    for row, (name, res) in zip(axes_rows, results.items()):
        for j, (ax, (key, head)) in enumerate(zip(row, cols)):
            if key == "x_adv":
                ax.imshow(_image(res["x_adv"]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_ylabel(f"{name}\n{classes[res['pred_clean']]} -> {classes[res['pred_adv']]}", fontsize=9)
            else:
                _attribution_panel(ax, res["attributions"][key], key.split("/")[0])
            if row is axes_rows[0]:
                ax.set_title(head, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


class AttackExplorer:
    """Pick an image, a model, an attack, eps and steps; see the attack succeed or fail.

    Shows clean / adversarial / amplified perturbation, the top-5 class probabilities before and
    after, the per-layer feature distortion (featlab.probe, for models with taps and denoiser pipelines)
    and captum attributions (Integrated Gradients and Saliency) for the clean and the adversarial image.
    The work is :func:`explore` (and :func:`success_rates`); this class holds the images, the models, the
    widget state and a cache per (model, attack, eps, steps, image), so moving back to a previous eps is
    instant; sliders update on release (no work while dragging).
    Introduced in notebooks/04_attack_explorer.ipynb.

    Args:
        models: name -> classifier on [0, 1] images (featlab models, ``Defended`` pipelines...).
        x, y: candidate images (N, C, H, W) in [0, 1] and labels (N,).
        classes: class names (default: the dataset's, else "0".."K-1").
        eps_max: slider maximum in pixel units (default: the dataset's, 0.5 for MNIST, 16/255 for CIFAR,
            shown in /255; 0.5 without a dataset).
        cache_size: results kept (default 256).
        ig_steps: path points of Integrated Gradients (default 64: the completeness gap of a 32-point path reached 10-15% on some MNIST maps).
        l2_max: maximum of the L2 slider, shown for "PGD L2" (default: ``eps_max * sqrt(pixels) / 4``,
            3.5 on MNIST, 0.87 on CIFAR-10, around the usual budgets of 2 and 0.5).
        dataset: "mnist", "cifar10"...: the defaults of ``classes`` and ``eps_max``, eps written as the
            dataset does (:func:`featlab.data.format_eps`) and the eps slider starting at its usual
            budget (:func:`featlab.data.threat_defaults`); None (default): plain numbers, slider at 0.3.

        >>> ex = AttackExplorer({"standard": model}, x_test, y_test, dataset="mnist")
        >>> ex.show()            # the widget; static figures under papermill
    """

    def __init__(self, models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                 classes: Sequence[str] | None = None, eps_max: float | None = None, cache_size: int = 256,
                 ig_steps: int = 64, l2_max: float | None = None, dataset: str | None = None):
        _check_models_and_data(models, x, y)
        if dataset is not None:
            check_choice("dataset", dataset, data.DATASETS)
            classes = classes if classes is not None else data.info(dataset).classes
            eps_max = eps_max if eps_max is not None else data.threat_defaults(dataset)["eps_max"]
        eps_max = 0.5 if eps_max is None else eps_max
        self.dataset = dataset
        check_number("eps_max", eps_max, low=0.0, low_open=True, high=1.0)
        check_number("cache_size", cache_size, low=1, integer=True)
        check_number("ig_steps", ig_steps, low=1, integer=True)
        if classes is not None and (isinstance(classes, str) or len(classes) < int(y.max()) + 1):
            raise ValueError(f"classes: one name per class is needed (at least {int(y.max()) + 1}), got {classes!r}")
        self.models, self.x, self.y = dict(models), x.cpu(), y.cpu()
        k = getattr(next(iter(self.models.values())), "num_classes", None) or int(y.max()) + 1
        self.classes = list(classes) if classes is not None else [str(i) for i in range(k)]
        self.eps_max, self.cache_size, self.ig_steps = float(eps_max), cache_size, ig_steps
        if l2_max is not None:
            check_number("l2_max", l2_max, low=0.0, low_open=True)
        self.l2_max = float(l2_max) if l2_max is not None else round(self.eps_max * x[0].numel() ** 0.5 / 4, 2)
        self.in_255 = eps_max < 0.2 or bool(dataset and dataset.startswith("cifar"))  # CIFAR budgets read in /255
        self.eps_default = data.threat_defaults(dataset)["eps"] if dataset else (8 / 255 if self.in_255 else 0.3)
        # a least-recently-used cache per (model, attack, eps, steps, image), one per explorer
        self._cached = functools.lru_cache(maxsize=cache_size)(self._compute)
        self.computed = 0                      # how many results were computed (not served from cache)

    def eps_label(self, eps: float, attack: str = "PGD Linf") -> str:
        """``eps`` as the dataset writes it (8/255 on CIFAR in Linf), or a plain number."""
        if self.dataset and attack != "PGD L2":
            return data.format_eps(eps, self.dataset)
        return f"{eps:.3g}"

    # -- the work (plain functions above), checked and cached ------------------------------------------------
    def attack(self, model: nn.Module, name: str, eps: float, steps: int) -> Attack:
        """:func:`make_attack`."""
        return make_attack(model, name, eps, steps)

    def attributions(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, t_clean: int,
                     t_adv: int) -> dict[str, torch.Tensor]:
        """:func:`attributions` with this explorer's ``ig_steps``."""
        return attributions(model, x, x_adv, t_clean, t_adv, self.ig_steps)

    def compute(self, model_name: str, attack: str, eps: float, steps: int, index: int) -> dict:
        """:func:`explore` for one setting on image ``index`` (cached: the same dict object on a hit)."""
        if model_name not in self.models:
            raise ValueError(f"model_name must be one of {list(self.models)}, got {model_name!r}")
        if attack not in ATTACK_CHOICES:
            raise ValueError(f"attack must be one of {list(ATTACK_CHOICES)}, got {attack!r}")
        check_number("index", index, low=0, high=len(self.x) - 1, integer=True)
        check_number("steps", steps, low=1, integer=True)
        check_number("eps", eps, low=0.0, high=1.0 if attack != "PGD L2" else None)
        return self._cached(model_name, attack, round(float(eps), 6), int(steps) if attack != "FGSM" else 0,
                            int(index))

    def _compute(self, model_name: str, attack: str, eps: float, steps: int, index: int) -> dict:
        res = explore(self.models[model_name], self.x[index:index + 1], self.y[index:index + 1], attack, eps,
                      max(steps, 1), self.ig_steps)
        self.computed += 1
        return res

    def _eps_step(self, attack: str) -> tuple[float, float]:
        """(step, top) of ``attack``'s eps slider in pixel units: Linf in steps of 1/255 on CIFAR, 0.01 otherwise, up
        to ``eps_max``; L2 in steps of 0.05 up to ``l2_max``."""
        return (0.05, self.l2_max) if attack == "PGD L2" else (1 / 255 if self.in_255 else 0.01, self.eps_max)

    def eps_grid(self, attack: str = "PGD Linf") -> list[float]:
        """The eps values the slider of ``attack`` can take, in pixel units (:meth:`_eps_step`)."""
        step, top = self._eps_step(attack)
        return [round(i * step, 6) for i in range(int(round(top / step)) + 1)]

    def flip_eps(self, model_name: str, attack: str = "PGD Linf", steps: int = 10, index: int = 0) -> FlipPoint:
        """Where the attack starts to flip image ``index``: bisection over the slider's grid (:meth:`eps_grid`),
        every probe a cached :meth:`compute`, so the figures of the two eps it returns cost nothing more. Returns
        :class:`FlipPoint` (``survived``: the largest grid eps it saw the attack fail at, ``flipped``: the smallest
        it saw it succeed at; neighbours on the grid when the attack's success grows with eps, as it does for
        nearly every image). ``flipped`` is None when even the slider's maximum fails; both are None when the
        clean image is misclassified (nothing to attack)."""
        grid = self.eps_grid(attack)
        won = lambda i: outcome(self.compute(model_name, attack, grid[i], steps, index))      # noqa: E731
        if won(0) is NOT_NEEDED:
            return FlipPoint(None, None)
        if won(len(grid) - 1) is not SUCCEEDED:
            return FlipPoint(grid[-1], None)
        lo, hi = 0, len(grid) - 1                  # eps 0 never flips; the maximum does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if won(mid) is SUCCEEDED else (mid, hi)
        return FlipPoint(grid[lo], grid[hi])

    def summary(self, res: Mapping) -> str:
        """:func:`summary_line` with this explorer's class names."""
        return summary_line(res, self.classes)

    def figure(self, res: Mapping, title: str | None = ""):
        """:func:`explorer_figure`; ``title`` "" puts the summary line on top, None no title (the live
        widget prints the summary above the figure)."""
        linf = res["attack"] != "PGD L2"      # one scale for every Linf figure: the usual budget is full white
        return explorer_figure(res, self.classes, title=self.summary(res) if title == "" else title,
                               amp=self.eps_default if linf else None)

    def success_curves(self, eps_list: Sequence[float], attack: str = "PGD Linf", steps: int = 10,
                       n: int | None = None) -> dict[str, list[float]]:
        """Attack success rate (% of the images each model classified correctly that the attack
        flips) per eps, for every model, over the first ``n`` images (:func:`success_rates`)."""
        return {name: list(success_rates(m, self.x[:n], self.y[:n], eps_list, attack, steps,
                                         desc=f"success curve: {name}").rates)
                for name, m in self.models.items()}

    # -- the view ------------------------------------------------------------------------------------------
    def widget(self):
        import ipywidgets as w
        from IPython.display import display
        scale = 255.0 if self.in_255 else 1.0
        self.w_model = w.Dropdown(options=list(self.models), description="model")
        self.w_attack = w.Dropdown(options=list(ATTACK_CHOICES), value="PGD Linf", description="attack")
        self.w_eps = w.FloatSlider(value=round(min(self.eps_default, self.eps_max) * scale, 3),
                                   min=0.0, max=self.eps_max * scale, step=self._eps_step("PGD Linf")[0] * scale,
                                   description="eps" + (" (/255)" if self.in_255 else ""), continuous_update=False)
        self.w_eps.add_class("featlab-eps")
        # L2 budgets are another unit: sqrt(pixels) times larger for the same per-pixel change
        self.w_eps_l2 = w.FloatSlider(value=round(self.l2_max / 2, 2), min=0.0, max=self.l2_max,
                                      step=self._eps_step("PGD L2")[0],
                                      description="eps (L2)", continuous_update=False)
        self.w_eps_l2.add_class("featlab-eps-l2")
        self.w_steps = w.IntSlider(value=10, min=1, max=50, description="steps", continuous_update=False)
        self.w_index = w.BoundedIntText(value=0, min=0, max=len(self.x) - 1, description="image")
        self.w_random = w.Button(description="random image")
        self.w_summary = w.HTML()
        self.w_summary.add_class("featlab-summary")
        self.w_out = w.Output()

        def redraw(*_):
            l2 = self.w_attack.value == "PGD L2"
            self.w_eps.layout.display, self.w_eps_l2.layout.display = ("none", None) if l2 else (None, "none")
            eps = self.w_eps_l2.value if l2 else self.w_eps.value / scale
            res = self.compute(self.w_model.value, self.w_attack.value, eps, self.w_steps.value, self.w_index.value)
            self.w_summary.value = f"<b>{self.summary(res)}</b>"
            fig = self.figure(res, title=None)
            with self.w_out:
                self.w_out.clear_output(wait=True)
                display(fig)
            plt.close(fig)

        def pick_random(_):
            self.w_index.value = int(torch.randint(0, len(self.x), (1,)))

        for c in (self.w_model, self.w_attack, self.w_eps, self.w_eps_l2, self.w_steps, self.w_index):
            c.observe(redraw, names="value")
        self.w_random.on_click(pick_random)
        redraw()
        controls = w.VBox([w.HBox([self.w_model, self.w_attack, self.w_index, self.w_random]),
                           w.HBox([self.w_eps, self.w_eps_l2, self.w_steps])])
        return w.VBox([controls, self.w_summary, self.w_out])

    def static(self, eps_values: Sequence[float], model_name: str | None = None, attack: str = "PGD Linf",
               steps: int = 10, index: int = 0) -> None:
        """One figure per eps for one model and image (what papermill and a rendered notebook show)."""
        from IPython.display import display
        name = model_name or next(iter(self.models))
        for eps in eps_values:
            res = self.compute(name, attack, eps, steps, index)
            fig = self.figure(res, title=f"{name}, {attack}, eps {self.eps_label(eps, attack)}, image {index}: "
                                         f"{self.summary(res)}")
            display(fig)
            plt.close(fig)

    def show(self, static_eps: Sequence[float] | None = None, index: int = 0) -> None:
        """The live explorer in a notebook frontend; static figures of image ``index`` for a few eps when
        unattended (``static_eps``, default the dataset's ``eps_list``, else 0.1, 0.2, 0.3)."""
        from IPython.display import display
        if running_unattended():
            if static_eps is None:
                static_eps = data.threat_defaults(self.dataset)["eps_list"] if self.dataset else (0.1, 0.2, 0.3)
            self.static(static_eps, index=index)
        else:
            display(self.widget())
