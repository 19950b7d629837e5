"""Matplotlib figures used by the notebooks."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from .probe import Distortion


def plot_distortion(curves: Mapping[str, Distortion], norm: str = "l2", ax=None, title: str | None = None,
                    styles: Mapping[str, dict] | None = None, log: bool = True):
    """Relative distortion vs depth, one line per named curve, mean with a +-1 std band."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    for i, (name, d) in enumerate(curves.items()):
        taps, m, s = d.taps, d.mean(norm), d.std(norm)
        xs = range(len(taps))
        kw = dict((styles or {}).get(name, {}))
        line, = ax.plot(xs, [m[t] for t in taps], marker="o", label=name, **kw)
        lo = [max(m[t] - s[t], 1e-6) for t in taps]
        ax.fill_between(xs, lo, [m[t] + s[t] for t in taps], alpha=0.12, color=line.get_color())
        ax.set_xticks(list(xs), taps, rotation=30)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("tap (input -> deeper)")
    ax.set_ylabel(f"relative distortion ({norm})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_feature_grid(clean: torch.Tensor, perturbed: torch.Tensor, channels: int = 8,
                      title: str = "", fig=None):
    """Feature maps of one image: rows clean / perturbed / |difference|, ``channels`` columns.

    ``clean`` and ``perturbed`` are one tap of one image, shape (C, H, W).
    """
    if clean.dim() != 3 or clean.shape != perturbed.shape:
        raise ValueError(f"clean and perturbed must be (C, H, W) maps of equal shape, got "
                         f"{tuple(clean.shape)} and {tuple(perturbed.shape)}")
    n = min(channels, clean.shape[0])
    diff = (perturbed - clean).abs()
    order = diff.flatten(1).sum(1).argsort(descending=True)[:n]   # most-changed channels first
    fig = fig or plt.figure(figsize=(1.4 * n, 4.4))
    axes = fig.subplots(3, n, squeeze=False)
    vmax = float(torch.maximum(clean[order].max(), perturbed[order].max()))
    for j, c in enumerate(order.tolist()):
        for i, (img, label) in enumerate(((clean, "clean"), (perturbed, "perturbed"), (diff, "|diff|"))):
            ax = axes[i][j]
            ax.imshow(img[c].cpu(), cmap="magma" if i == 2 else "viridis", vmin=0, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"ch {c}", fontsize=8)
    fig.suptitle(title)
    return fig


def show_images(rows: Sequence[torch.Tensor], labels: Sequence[str], n: int = 8, fig=None):
    """A grid of images, one row per tensor (N, C, H, W) in [0, 1]."""
    fig = fig or plt.figure(figsize=(1.3 * n, 1.4 * len(rows)))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (imgs, lab) in enumerate(zip(rows, labels)):
        for j in range(n):
            img = imgs[j].detach().cpu()
            axes[i][j].imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
            axes[i][j].set_xticks([]), axes[i][j].set_yticks([])
        axes[i][0].set_ylabel(lab)
    return fig


class LiveLoss:
    """A Trainer callback that plots chosen logs per step, redrawn in place every ``every`` steps.

        >>> live = LiveLoss(["loss", "feat/conv1"])
        >>> trainer.fit(x, y, callback=live)
    """

    def __init__(self, keys: Sequence[str] | None = None, every: int = 25, title: str = ""):
        self.keys, self.every, self.title = list(keys) if keys else None, every, title
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}
        self._handle = None

    def __call__(self, step: int, logs: Mapping[str, float]) -> None:
        keys = self.keys or [k for k in logs if k not in ("eps", "pgd", "train_acc")]
        self.steps.append(step)
        for k in keys:
            self.values.setdefault(k, []).append(float(logs.get(k, float("nan"))))
        if step % self.every == 0:
            self.draw()

    def figure(self):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for k, v in self.values.items():
            ax.plot(self.steps[-len(v):], v, label=k, lw=1)
        ax.set_yscale("log"), ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
        ax.set_title(self.title)
        return fig

    def draw(self) -> None:
        from IPython.display import display
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
