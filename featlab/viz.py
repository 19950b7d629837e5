"""Matplotlib figures used by the notebooks."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from . import data
from ._utils import check_number, eval_mode
from .probe import Distortion


def log_ticks(ax, axis: str = "y") -> list[float]:
    """Plain-number ticks on a log (or symlog) axis: 1, 2, 5 x each power of ten in view, or 1-9 x where
    that gives fewer than three (matplotlib labels only powers of ten, so an axis that spans less than a
    decade shows one label, or labels like 4x10^-1). Returns the ticks set ([] when fewer than two fit)."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    for mults in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [t for e in range(-12, 7) for m in mults if lo <= (t := float(f"{m}e{e}")) <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:
        return []
    axis_obj = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks, [f"{t:g}" for t in ticks])
    axis_obj.set_minor_locator(plt.NullLocator())
    return ticks


def plot_distortion(curves: Mapping[str, Distortion], norm: str = "l2", ax=None, title: str | None = None,
                    styles: Mapping[str, dict] | None = None, log: bool = True):
    """Relative distortion vs depth, one line per named curve: the mean, with a band from the
    25th to the 75th percentile over images (robust on a log axis, unlike +-1 std). Each curve has its own marker
    (:data:`MARKERS`, the first the largest), so curves that coincide stay visible; ``styles`` may override it.
    On the log axis the bottom sits a factor 3 below the lowest mean: a band reaching further is cut there."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    uppers: list[float] = []
    for i, (name, d) in enumerate(curves.items()):
        taps, m = d.taps, d.mean(norm)
        per_image = d.l2 if norm == "l2" else d.linf
        xs = range(len(taps))
        kw = dict((styles or {}).get(name, {}))
        marker, size = MARKERS[i % len(MARKERS)]          # its own marker, the first the largest: lines that
        kw.setdefault("marker", marker), kw.setdefault("markersize", size)     # coincide stay visible
        line, = ax.plot(xs, [m[t] for t in taps], label=name, **kw)
        q = [torch.quantile(per_image[t].float(), torch.tensor([0.25, 0.75])).tolist() for t in taps]
        ax.fill_between(xs, [a for a, _ in q], [b for _, b in q], alpha=0.12, color=line.get_color())
        uppers += [b for _, b in q if b > 0]
        ax.set_xticks(list(xs), taps, rotation=30)
    if log:
        ax.set_yscale("log")
        # the axis spans every mean line with a factor 3 to spare; a band reaching far below (the images a
        # dead-gradient model keeps still, say) runs off the bottom instead of squeezing the lines together
        # on axes shared with a panel drawn before (sharey), whose limits an earlier call fixed, the limits grow to
        # hold this panel's lines and upper bands too
        means = [v for d in curves.values() for v in d.mean(norm).values() if v > 0]
        if means:
            low, high = min(means) / 3, max(means + uppers) * 1.5
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, low), hi) if ax.get_autoscaley_on() else ax.set_ylim(min(lo, low), max(hi, high))
        log_ticks(ax)
    ax.set_xlabel("tap (input -> deeper)")
    ax.set_ylabel(f"relative distortion ({norm})")
    ax.grid(alpha=0.3)
    from matplotlib.patches import Patch        # the bands are a spread over images, not a confidence interval
    handles, labels = ax.get_legend_handles_labels()
    band = "band, in its curve's colour: 25th-75th percentile of the images"
    if band not in labels:
        handles, labels = handles + [Patch(color="grey", alpha=0.25)], labels + [band]
    ax.legend(handles, labels, fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_feature_grid(clean: torch.Tensor, perturbed: torch.Tensor, channels: int = 8,
                      title: str = "", fig=None, label: str = "adversarial"):
    """Feature maps of one image: rows clean / ``label`` (the perturbed maps) / |difference|, ``channels`` columns.

    ``clean`` and ``perturbed`` are one tap of one image, shape (C, H, W); ``label`` names the perturbation
    (default "adversarial"; "sign noise" for noise).
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
        dmax = float(diff[order].max()) or 1.0
        for i, (img, label) in enumerate(((clean, "clean"), (perturbed, label), (diff, "|diff| (own scale)"))):
            ax = axes[i][j]
            ax.imshow(img[c].cpu().numpy(), cmap="magma" if i == 2 else "viridis", vmin=0, vmax=dmax if i == 2 else vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"ch {c}", fontsize=8)
    fig.suptitle(title)
    return fig


def show_images(rows: Sequence[torch.Tensor], labels: Sequence[str], n: int = 8, fig=None,
                titles: Sequence[str] | None = None, captions: Sequence[Sequence[str] | None] | None = None):
    """A grid of images, one row per tensor (N, C, H, W) in [0, 1] (grey or RGB); ``labels`` name the
    rows, ``titles`` (optional) the first ``n`` columns, e.g. the class names of the images. ``captions``
    (optional, one entry per row, None for none) writes a word over each image of that row, e.g. the class a
    model reads in the adversarial row; red where it is not ``titles``' word for that column."""
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"captions must have one entry per row ({len(rows)}), got {len(captions)}")
    titled = [i for i in range(len(rows)) if (i == 0 and titles is not None) or (captions and captions[i] is not None)]
    fig = fig or plt.figure(figsize=(1.3 * n, 1.4 * len(rows) + 0.2 * len(titled)))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (imgs, lab) in enumerate(zip(rows, labels)):
        for j in range(n):
            img = imgs[j].detach().cpu().clamp(0, 1)
            axes[i][j].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i][j].set_xticks([]), axes[i][j].set_yticks([])
            if i == 0 and titles is not None and j < len(titles):
                axes[i][j].set_title(str(titles[j]), fontsize=8)
            elif captions and captions[i] is not None and j < len(captions[i]):
                word = str(captions[i][j])
                differs = titles is not None and j < len(titles) and word != str(titles[j])
                axes[i][j].set_title(word, fontsize=8, color="C3" if differs else "black")
        axes[i][0].set_ylabel(lab)
    return fig


class LiveLoss:
    """A Trainer callback that plots chosen logs per step, redrawn in place every ``every`` steps. ``keys`` may map
    each log key to its legend words; ``smooth`` > 1 draws running means over that many steps; ``chance`` draws a
    dotted line at that value on a 0-100 axis (an accuracy); ``ylim`` fixes the y range (widened to fit the values).

        >>> live = LiveLoss(["loss", "feat/conv1"])
        >>> trainer.fit(x, y, callback=live)
    """

    def __init__(self, keys: Sequence[str] | Mapping[str, str] | None = None, every: int = 25, title: str = "",
                 log: bool = True, smooth: int = 0, ylabel: str = "", chance: float | None = None,
                 ylim: tuple[float, float] | None = None):
        check_number("smooth", smooth, low=0, integer=True)
        self.keys, self.every, self.title, self.log = list(keys) if keys else None, every, title, log
        self.labels = dict(keys) if isinstance(keys, Mapping) else {}      # log key -> the legend's words
        self.ylabel, self.chance = ylabel, chance        # chance: a dotted line there, the axis 0-100 (an accuracy)
        self.smooth = smooth      # > 1: each line faint per step, and bold as the mean of the last `smooth` steps
        self.ylim = ylim          # a fixed y range (a share from 0 to 1, say), widened where a value leaves it
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
        fig, ax = plt.subplots(figsize=(9.5, 3.2), layout="constrained")
        for i, (key, v) in enumerate(self.values.items()):
            steps, k = self.steps[-len(v):], self.labels.get(key, key)
            if self.smooth > 1:          # noisy steps (a fresh eps per batch, say): the running mean carries the trend
                t = torch.tensor(v, dtype=torch.float64)
                c = torch.cat([t.new_zeros(1), t.cumsum(0)])
                w = torch.arange(1, len(t) + 1).clamp(max=self.smooth)
                ax.plot(steps, v, color=f"C{i}", lw=0.8, alpha=0.35)
                ax.plot(steps, ((c[1:] - c[torch.arange(len(t)) + 1 - w]) / w).tolist(), color=f"C{i}", lw=2,
                        label=f"{k} (mean of the last {self.smooth} steps)")
            else:
                ax.plot(steps, v, label=k, lw=1)
        if self.log:
            ax.set_yscale("symlog", linthresh=1e-3)
            log_ticks(ax)
        if self.chance is not None:
            ax.axhline(self.chance, color="k", ls=":", lw=1.5, label=f"chance ({self.chance:g}%)")
            ax.set_ylim(0, 100)
        if self.ylim is not None:
            seen = [x for v in self.values.values() for x in v if math.isfinite(x)]
            ax.set_ylim(min([self.ylim[0], *seen]), max([self.ylim[1], *seen]))
        ax.set_xlabel("step"), ax.set_ylabel(self.ylabel), ax.grid(alpha=0.3)
        n = len(ax.get_legend_handles_labels()[1])          # under the axes, never on the curves; the plot keeps its width
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=max(1, min(3, n)))
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


def afd_diagram(ax=None):
    """The AFD game as a box-and-arrow figure: x and x_adv -> encoder E -> head C / discriminator D."""
    ax = ax or plt.subplots(figsize=(9, 3.2))[1]
    boxes = {"x (clean)": (0.05, 0.72), "x_adv = PGD(E+C)": (0.05, 0.22), "encoder E": (0.38, 0.47),
             "head C\n(cross-entropy on clean)": (0.72, 0.78), "discriminator D(h, y)\nclean or adversarial?": (0.72, 0.18)}
    for text, (bx, by) in boxes.items():
        ax.text(bx, by, text, ha="left", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.4", fc="#eef3fb" if "E" in text[:9] else "#f7f7f7", ec="#335"))
    arrows = [((0.2, 0.72), (0.37, 0.52)), ((0.27, 0.22), (0.37, 0.43)), ((0.52, 0.52), (0.71, 0.76)),
              ((0.52, 0.43), (0.71, 0.22))]
    for start, end in arrows:
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color="#335"))
    ax.text(0.56, 0.05, "D: separate E(x) from E(x_adv)   |   E: make E(x_adv) look clean to D", fontsize=9,
            ha="center", color="#a33")
    ax.set_xlim(0, 1.05), ax.set_ylim(0, 1), ax.axis("off")
    return ax


@torch.no_grad()
def plot_embeddings(model, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, ax=None, title: str = ""):
    """Clean (dots) and adversarial (crosses) embeddings in the 2-D PCA plane of the clean ones, by class. The axis
    labels give each direction's share of the clean embeddings' variance; ``ax.plane_share`` holds their sum."""
    ax = ax or plt.subplots(figsize=(5, 4.5))[1]
    with eval_mode(model):
        h, ha = model.embed(x).float().cpu(), model.embed(x_adv).float().cpu()
    mean = h.mean(0, keepdim=True)
    _, sv, vh = torch.linalg.svd(h - mean, full_matrices=False)      # exact: the embeddings are small
    v, share = vh[:2].T, (sv[:2] ** 2 / (sv ** 2).sum()).tolist()    # each direction's share of the clean variance
    p, pa = (h - mean) @ v, (ha - mean) @ v
    for c in range(int(y.max()) + 1):
        sel = (y == c).cpu()
        ax.scatter(p[sel, 0], p[sel, 1], s=8, color=f"C{c % 10}", alpha=0.6)
        ax.scatter(pa[sel, 0], pa[sel, 1], s=14, color=f"C{c % 10}", marker="x", alpha=0.6)
    ax.set_title(title or "embeddings: clean (dots) vs adversarial (x)")
    ax.set_xticks([]), ax.set_yticks([])
    # a 2-D picture of a 64- or 192-d cloud: the labels say how much of it the plane shows
    ax.set_xlabel(f"1st principal direction ({100 * share[0]:.0f}% of the clean variance)")
    ax.set_ylabel(f"2nd principal direction ({100 * share[1]:.0f}%)")
    ax.plane_share = share[0] + share[1]
    return ax


def plot_history(histories: Mapping[str, Sequence[Mapping[str, float]]], keys: Sequence[str] = ("clean_acc", "robust_acc")):
    """Per-epoch curves of a Trainer's history, one panel per key, one line per run."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            pts = [(h["epoch"], h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("epoch"), ax.set_ylabel(key), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return fig


#: legend names that say what a spec is where its name misleads ("apgd" is two attacks, not APGD alone)
LEGEND_NAMES = {"apgd": "apgd (AutoAttack fast: APGD-CE + APGD-T)"}


def _plotted(rows: Sequence[Mapping], by: str = "attack") -> dict[str, list]:
    """{row[by]: [(eps, robust_acc, n)]} of the rows :func:`plot_robustness` draws (Linf rows above eps 0.5 left
    out); n is the row's "n" (or "n_eval"), None where it has neither."""
    groups: dict[str, list] = {}
    for r in rows:
        if r.get("norm", "linf") != "linf" or r["eps"] <= 0.5:
            groups.setdefault(str(r[by]), []).append((r["eps"], r["robust_acc"], r.get("n", r.get("n_eval"))))
    return groups


def _lowest(groups: Mapping[str, list]) -> float:
    """The lowest value a robustness panel draws: a point, or the bottom of a single point's Wilson bar."""
    from .verdicts import wilson
    return min((wilson(acc, int(n))[0] if n and len(pts) == 1 else acc for pts in groups.values()
                for _, acc, n in pts), default=0.0)


def plot_measurements(measurements: Sequence[Any], ax=None, title: str = "", chance: float | None = None,
                      colors: Sequence[str] | None = None, labels: Sequence[str] | None = None):
    """One bar per :class:`featlab.verdicts.Measurement` (an accuracy on n images), with its 95% Wilson interval as
    an error bar and its value and n above it: what each attack says about one model, side by side (e.g. PGD's
    98.8% next to BPDA's 0.0% on a defense that hides its gradient), or one measurement of several models.
    ``labels``: the bars' names (default: each measurement's attack). ``chance``: a dotted line, labelled."""
    if not measurements:
        raise ValueError("measurements: give at least one featlab.verdicts.Measurement")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * len(measurements) + 2.5, 3.4))
    accs = [m.acc for m in measurements]
    lo = [m.acc - m.interval[0] for m in measurements]
    hi = [m.interval[1] - m.acc for m in measurements]
    xs = range(len(measurements))
    ax.bar(xs, accs, yerr=[lo, hi], capsize=4, color=list(colors) if colors else [f"C{i}" for i in xs], alpha=0.85)
    for x, m in zip(xs, measurements):
        ax.annotate(f"{m.acc:.1f}%\n(n={m.n})", (x, m.interval[1]), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=8)
    ax.set_xticks(list(xs), list(labels) if labels is not None else [m.attack for m in measurements], rotation=15)
    ax.set_ylim(0, 118)
    ax.set_ylabel("accuracy (%)")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:g}%)")
        ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def legend_below(fig, axes, ncol: int = 4, fontsize: float = 9) -> float:
    """One legend under panels side by side, in place of theirs: each label of ``axes`` once, in the order first
    seen (a panel's own legend covers half of a zoomed axis). Returns the share of the figure's height the legend
    takes at the bottom, for ``plt.tight_layout(rect=(0, bottom, 1, 1))``."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return 0.0
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(ncol, len(handles)),
               fontsize=fontsize)
    rows = -(-len(handles) // ncol)
    return min(0.5, (rows * 1.5 * fontsize + 8) / (72 * fig.get_figheight()))


def shared_zoom(panels: Iterable[Sequence[Mapping]], by: str = "attack", above: float = 40.0,
                margin: float = 3.0) -> float:
    """The one y-axis bottom for panels drawn side by side with :func:`plot_robustness` (its ``zoom``): the
    lowest point of the panels whose points all lie above ``above`` percent, minus ``margin``; 0.0 when no
    panel qualifies (every panel keeps 0-100). So two robust models are compared on one scale."""
    lows = [_lowest(g) for g in (_plotted(rows, by) for rows in panels) if g]
    zoomed = [low for low in lows if low > above]
    return max(0.0, min(zoomed) - margin) if zoomed else 0.0


#: markers of the lines of :func:`plot_robustness`, largest first, so a point drawn over another leaves it visible
MARKERS = (("o", 9), ("s", 7.5), ("^", 6.5), ("D", 5), ("v", 4.5), ("P", 4), ("x", 4))
LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))     # one per series, in MARKERS' order


def plot_robustness(rows: Sequence[Mapping], by: str = "attack", ax=None, title: str = "", label_prefix: str = "",
                    dataset: str | None = None, zoom: bool | float = False, chance: float | None = None):
    """Robust accuracy over eps, one line per ``row[by]`` (an attack, or a threat model).

    ``rows``: from :func:`featlab.evaluate.sweep` or :func:`featlab.evaluate.preprocessing_defense`;
    Linf rows above eps 0.5 (the checklist's "reaches ~0" point at 1.0) are left out of the plot.
    ``dataset``: the eps ticks as that dataset writes them (:func:`featlab.data.format_eps`: 2/255,
    4/255, 8/255 on CIFAR); None: plain numbers. ``zoom``: where every point lies above 40%, the y axis spans
    only the points (at least 10 points wide, up to 100) and the axis label says so; otherwise 0-100. A number
    instead of True is the bottom of the zoomed axis, so that panels side by side share one scale
    (:func:`shared_zoom`). Each line has its own marker, the first the largest, so points that coincide stay
    visible, and its own line style (solid, dashed, dash-dot, ...), each thinner than the one before, so a line
    drawn over another (oblivious over BPDA at the same numbers) leaves both visible; a series of one point is
    drawn hollow, on top, shifted right by a step per such point and labelled with its value, and where its row
    carries "n" (or "n_eval"), with its 95% Wilson interval as an error bar (a point on 40 images is uncertain by
    about 10 points; the lines' n is in the caller's title). ``chance``: a dotted line at that accuracy (e.g. 10 for
    ten classes), labelled.
    """
    from .verdicts import wilson
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    groups = _plotted(rows, by)
    xs = [p[0] for pts in groups.values() for p in pts]
    shift, k = 0.025 * ((max(xs) - min(xs)) if xs else 0.0), 0
    styles = MARKERS * (1 + len(groups) // len(MARKERS))
    for i, ((name, pts), (marker, size)) in enumerate(zip(groups.items(), styles)):
        pts.sort(key=lambda p: p[:2])
        # a single point (an attack run at one eps only) is drawn hollow, larger, on top, a little to the right (one
        # step per such point) and labelled with its value: a line's marker at the same place (e.g. "none" at 0%)
        # would otherwise hide it
        single = dict(markerfacecolor="none", markeredgewidth=1.8, zorder=4) if len(pts) == 1 else {}
        k += bool(single)
        x = [p[0] + k * shift * bool(single) for p in pts]
        line, = ax.plot(x, [p[1] for p in pts], marker=marker, markersize=size + 3 * bool(single), alpha=0.85,
                        linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=max(0.9, 2.2 - 0.35 * i),
                        label=label_prefix + LEGEND_NAMES.get(name, name), **single)
        if single and pts[0][2]:          # its 95% Wilson interval
            lo, hi = wilson(pts[0][1], int(pts[0][2]))
            ax.errorbar(x, [pts[0][1]], yerr=[[pts[0][1] - lo], [hi - pts[0][1]]], fmt="none", ecolor=line.get_color(),
                        elinewidth=1.2, capsize=3, alpha=0.85, zorder=4)
        if single:
            # 97.5 stays 97.5, 100.0 is 100; every other label below its point, so that two single points at
            # one value (AutoAttack and Square both at 97.5) do not write their labels over each other
            ax.annotate(f"{pts[0][1]:.1f}".rstrip("0").rstrip("."), (x[0], pts[0][1]), textcoords="offset points",
                        xytext=(5, 4 if k % 2 else -11), fontsize=7, color=line.get_color(), zorder=5)
    if k and shift:          # room right of the shifted points for their labels
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, max(hi, max(xs) + (k + 3) * shift))

    ax.set_xlabel("eps (pixel units)")
    if dataset is not None and groups:
        ticks = sorted({p[0] for pts in groups.values() for p in pts})
        ax.set_xticks(ticks, [data.format_eps(t, dataset) for t in ticks])
        ax.set_xlabel("eps (Linf)")
    ax.set_ylabel("accuracy under attack (%)")
    room = 0.07 if k else 0.0    # headroom (share of the span) for a value label above a point at 100%, inside the frame
    ax.set_ylim(-2, 102 + room * 104)
    low = _lowest(groups)          # a zoomed axis holds the single points' Wilson bars too
    if zoom is not False and zoom is not None and low > 40:
        bottom = max(0.0, min(low - 3.0, 90.0)) if zoom is True else min(float(zoom), low)
        ax.set_ylim(bottom, 101 + room * (101 - bottom))
        ax.set_ylabel(f"accuracy under attack (%)\nzoomed: {bottom:.0f}-100")
    if chance is not None and ax.get_ylim()[0] < chance:      # a zoomed axis above it leaves it out of the legend too
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:g}%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
