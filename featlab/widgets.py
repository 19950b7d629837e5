"""ipywidgets explorers, each with a static fallback for papermill and rendered notebooks."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from ._utils import check_number
from .attacks import PGD
from .notebooks import running_unattended
from .probe import compare, random_noise
from .viz import plot_distortion, plot_feature_grid


class FeatureNoiseExplorer:
    """Eps slider + tap dropdown: distortion-vs-depth curves (adversarial vs random noise, every
    model) and the feature maps of one image at the chosen tap, recomputed on release of the
    slider and cached per eps. Introduced in notebooks/01_feature_noise.ipynb.

    Args:
        models: name -> featlab model (e.g. {"standard": m1, "PGD-AT": m2}).
        x, y: a small batch of clean images (N, C, H, W) in [0, 1] and labels (N,).
        eps_values: the slider's stops (Linf, pixel units).
        attack_steps: PGD steps (default 10).
        image_index: which image of the batch the feature grid shows (default 0).
    """

    def __init__(self, models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                 eps_values: Sequence[float], attack_steps: int = 10, image_index: int = 0, seed: int = 0):
        if not models:
            raise ValueError("models must name at least one model")
        self.models, self.x, self.y = dict(models), x, y
        self.eps_values = [float(e) for e in eps_values]
        for e in self.eps_values:
            check_number("eps_values[...]", e, low=0.0, high=1.0)
        check_number("image_index", image_index, low=0, high=len(x) - 1, integer=True)
        self.attack_steps, self.image_index, self.seed = attack_steps, image_index, seed
        first = next(iter(self.models.values()))
        shapes = {k: v.dim() for k, v in first.features(x[:1]).items()}
        self.spatial_taps = [k for k, d in shapes.items() if d == 4]
        self._cache: dict[float, dict] = {}

    def compute(self, eps: float) -> dict:
        """{model: {"distortion": {set: Distortion}, "x_adv": tensor}} for one eps (cached)."""
        if eps not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            noise = random_noise(self.x, eps, kind="sign", generator=g)
            res = {}
            for name, m in self.models.items():
                x_adv = PGD(m, eps=eps, steps=self.attack_steps, step_size=2.5 * max(eps, 1e-8) / self.attack_steps)(
                    self.x, self.y).cpu()
                res[name] = {"distortion": compare(m, self.x, {"adversarial": x_adv, "random": noise}),
                             "x_adv": x_adv}
            self._cache[eps] = res
        return self._cache[eps]

    def figure(self, eps: float, tap: str):
        res = self.compute(eps)
        fig = plt.figure(figsize=(13, 4.2))
        left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.1])
        ax = left.subplots()
        curves, styles = {}, {}
        for i, (name, r) in enumerate(res.items()):
            for s, d in r["distortion"].items():
                curves[f"{name}: {s}"] = d
                styles[f"{name}: {s}"] = {"linestyle": "-" if s == "adversarial" else "--", "color": f"C{i}"}
        plot_distortion(curves, ax=ax, styles=styles, title=f"relative L2 distortion, eps = {eps:.3g}")
        name0 = next(iter(self.models))
        m = self.models[name0]
        i = self.image_index
        with torch.no_grad():
            clean = m.features(self.x[i:i + 1], [tap])[tap][0]
            adv = m.features(res[name0]["x_adv"][i:i + 1], [tap])[tap][0]
        plot_feature_grid(clean, adv, channels=6, title=f"{name0}, tap {tap}, image {i}", fig=right)
        return fig

    def static(self, tap: str | None = None) -> None:
        """One figure per eps value (what papermill and a rendered notebook show)."""
        from IPython.display import display
        tap = tap or self.spatial_taps[-1]
        for eps in self.eps_values:
            fig = self.figure(eps, tap)
            display(fig)
            plt.close(fig)

    def widget(self):
        import ipywidgets as w
        from IPython.display import display
        slider = w.SelectionSlider(options=[(f"{e:.3g}", e) for e in self.eps_values], value=self.eps_values[0],
                                   description="eps", continuous_update=False)
        taps = w.Dropdown(options=self.spatial_taps, value=self.spatial_taps[-1], description="tap")
        out = w.Output()

        def redraw(*_):
            fig = self.figure(slider.value, taps.value)
            with out:
                out.clear_output(wait=True)
                display(fig)
            plt.close(fig)

        slider.observe(redraw, names="value")
        taps.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([slider, taps]), out])

    def show(self) -> None:
        """The live widget in a notebook frontend; static figures when run unattended."""
        from IPython.display import display
        if running_unattended():
            self.static()
        else:
            display(self.widget())
