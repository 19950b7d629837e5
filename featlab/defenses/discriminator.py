"""The modules and losses of Adversarial Feature Desensitization (Bashivan et al., NeurIPS 2021,
https://arxiv.org/abs/2006.04621): the projection discriminator on the embedding, the game's losses,
and the post-hoc probe of how separable clean and adversarial embeddings stay.

The game itself (who is updated when, with which optimiser) is a training objective:
:class:`featlab.train.AFD`. Introduced in notebooks/03_afd.ipynb.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .._utils import check_choice, check_labels, check_model_input, check_number, eval_mode, model_device


class ProjectionDiscriminator(nn.Module):
    """Spectral-normalised MLP on the embedding with a label-projection term (Miyato & Koyama 2018),
    the AFD code's SNPDFC3: three SN-linear maps d -> d -> d -> 1.

    score(h, y) = w^T phi(h) + <embed(y), phi(h)>, phi = 2 SN-linear layers (d -> d -> d), LeakyReLU 0.2;
    the output layer w (d -> 1) and the label embedding are xavier-initialised, as in the reference.

    Args:
        dim: embedding size d (64 for the MNIST small ResNet, 512 for ResNet-18).
        num_classes: number of labels for the projection (default 10).
    Shape: h (N, d), y (N,) -> scores (N,); higher means "clean".
    """

    def __init__(self, dim: int, num_classes: int = 10):
        super().__init__()
        check_number("dim", dim, low=1, integer=True)
        check_number("num_classes", num_classes, low=2, integer=True)
        act = nn.LeakyReLU(0.2)
        self.phi = nn.Sequential(spectral_norm(nn.Linear(dim, dim)), act, spectral_norm(nn.Linear(dim, dim)), act)
        out, emb = nn.Linear(dim, 1), nn.Embedding(num_classes, dim)
        nn.init.xavier_uniform_(out.weight)
        nn.init.xavier_uniform_(emb.weight)
        self.linear = spectral_norm(out)
        self.embed = spectral_norm(emb)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.phi(h)
        return self.linear(f).squeeze(1) + (self.embed(y) * f).sum(1)


def afd_losses(s_clean: torch.Tensor, s_adv: torch.Tensor, loss: str = "wgan") -> tuple[torch.Tensor, torch.Tensor]:
    """(D's loss, E's adversarial loss) of the AFD game from D's scores on clean and adversarial embeddings.

    "wgan" (the reference code): D minimises mean D(E(x_adv)) - mean D(E(x)); E minimises -mean D(E(x_adv)).
    "bce" (the standard GAN loss): D tells clean (1) from adversarial (0); E pushes E(x_adv) towards 1.
    """
    check_choice("loss", loss, ("wgan", "bce"))
    if loss == "wgan":
        return s_adv.mean() - s_clean.mean(), -s_adv.mean()
    bce = nn.functional.binary_cross_entropy_with_logits
    d_loss = bce(s_clean, torch.ones_like(s_clean)) + bce(s_adv, torch.zeros_like(s_adv))
    return d_loss, bce(s_adv, torch.ones_like(s_adv))


def embedding_separability(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           attack: Any, steps: int = 400, lr: float = 0.1, loss: str = "bce",
                           holdout: float = 0.25, seed: int = 0, batch_size: int = 500) -> dict[str, float]:
    """How well a FRESH discriminator tells the frozen encoder's clean embeddings from adversarial ones.

    The post-hoc probe behind AFD's claim: AFD trains its encoder so that a discriminator cannot
    separate E(x) from E(x_adv). During training, D at chance can mean "D never learned" or "E won";
    a new :class:`ProjectionDiscriminator`, trained here for ``steps`` full-batch SGD steps on the
    embeddings of a (1 - ``holdout``) share of the images and scored on the rest, tells them apart.
    Works for any featlab model (standard, PGD-AT, TRADES, AFD), so the numbers compare.

    Args:
        model: a featlab model with ``embed`` and ``num_classes``; left unchanged, in its own mode.
        x, y: images in [0, 1] (N, C, H, W) and labels (N,).
        attack: a callable ``(x, y) -> x_adv`` against ``model`` (e.g. ``PGD(model, eps=0.3, steps=10)``).
        steps, lr: the probe's SGD steps and learning rate (momentum 0.9); loss: "bce" (default) or "wgan".
        holdout: share of images scored, never trained on (default 0.25).
        seed: the attack's random starts, the split and the probe's initialisation (the caller's RNG is
            left as it was).

    Returns:
        {"train_acc", "holdout_acc"}: balanced accuracy in percent (50 = cannot tell them apart),
        {"holdout_gap"}: mean score clean - adversarial on the held-out images, {"n_train", "n_holdout"},
        and the model's own {"clean_acc", "robust_acc"} on these images under ``attack`` (percent).
    """
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    check_choice("loss", loss, ("wgan", "bce"))
    check_number("steps", steps, low=1, integer=True)
    check_number("lr", lr, low=0.0, low_open=True)
    check_number("holdout", holdout, low=0.0, high=0.9, low_open=True)
    if not hasattr(model, "embed"):
        raise TypeError("model must be a featlab model with embed(x) (the encoder's output)")
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)          # the attack's random starts too: the call repeats by itself
        x_adv = torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]).cpu()
                           for i in range(0, len(x), batch_size)])
    with eval_mode(model), torch.no_grad():
        h_c = torch.cat([model.embed(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
        h_a = torch.cat([model.embed(x_adv[i:i + batch_size].to(device)).float().cpu()
                         for i in range(0, len(x), batch_size)])
        clean_ok = model.head(h_c.to(device)).argmax(1).cpu() == y.cpu()
        adv_ok = model.head(h_a.to(device)).argmax(1).cpu() == y.cpu()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    n_hold = max(1, int(round(holdout * len(x))))
    hold, train = order[:n_hold], order[n_hold:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        disc = ProjectionDiscriminator(h_c.shape[1], int(getattr(model, "num_classes", int(y.max()) + 1)))
    opt = torch.optim.SGD(disc.parameters(), lr=lr, momentum=0.9)
    yc = y.cpu()
    for _ in range(steps):
        d_loss, _ = afd_losses(disc(h_c[train], yc[train]), disc(h_a[train], yc[train]), loss)
        opt.zero_grad(set_to_none=True)
        d_loss.backward()
        opt.step()
    disc.eval()

    def balanced(idx: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            s_c, s_a = disc(h_c[idx], yc[idx]), disc(h_a[idx], yc[idx])
            # BCE scores are logits (threshold 0); WGAN scores have no fixed zero: the midpoint of the
            # TRAINING means is the threshold, so the held-out accuracy is not fitted on held-out data
            if loss == "bce":
                thr = torch.zeros(())
            else:
                thr = (disc(h_c[train], yc[train]).mean() + disc(h_a[train], yc[train]).mean()) / 2
            acc = 50.0 * ((s_c > thr).float().mean() + (s_a <= thr).float().mean())
            return float(acc), float(s_c.mean() - s_a.mean())
    train_acc, _ = balanced(train)
    hold_acc, gap = balanced(hold)
    return {"train_acc": train_acc, "holdout_acc": hold_acc, "holdout_gap": gap,
            "n_train": len(train), "n_holdout": len(hold),
            "clean_acc": 100.0 * clean_ok.float().mean().item(),
            "robust_acc": 100.0 * (clean_ok & adv_ok).float().mean().item()}
