"""Adversarial Feature Desensitization (Bashivan et al., NeurIPS 2021, https://arxiv.org/abs/2006.04621).

A game between the classifier's encoder E and a discriminator D on the embedding: D learns to
tell E(x) from E(x_adv); E learns to make E(x_adv) look clean, while E and the head C keep
classifying clean inputs. Per batch (as in the authors' code, BashivanLab/afd):

1. x_adv = attack(E + C) (eval mode; PGD by default, featlab's APGD-CE optional);
2. update E and C with cross-entropy on CLEAN inputs;
3. update D:  WGAN  mean D(E(x_adv), y) - mean D(E(x), y)   (or the BCE GAN loss);
4. update E alone:  WGAN  -mean D(E(x_adv), y)   (or BCE towards "clean").

    >>> afd = AFD(model, eps=0.3, steps=40, step_size=0.01)
    >>> logs = afd.step(x, y)           # every loss term, D's accuracy, gradient norms
    >>> Trainer(model, afd, epochs=100, optimizer=afd.optimizer_ec).fit(x_train, y_train)

Introduced in notebooks/03_afd.ipynb.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import nn

from .. import distributed
from .._utils import check_choice, check_labels, check_model_input, check_number, inside_checked_scope
from ..attacks import PGD
from ..attacks.apgd import apgd_ce_examples
from ..defenses.discriminator import ProjectionDiscriminator, afd_losses
from .objectives import Objective


class AFDGameWarning(UserWarning):
    """The AFD game did not happen: the discriminator sat at chance for a whole epoch."""


def _grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients, as a tensor (no device sync)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


class AFD(Objective):
    """The AFD game as a Trainer objective, with a step-by-step API for teaching.

    Args:
        model: a featlab model (its ``encoder`` is E, its ``head`` is C).
        eps: Linf radius in pixel units (default 0.3; CIFAR 8/255).
        steps, step_size: the PGD used to make x_adv (default 40 and 0.01, the MNIST setting).
        attack: "pgd" (default) or "apgd-ce" (featlab's batched APGD-CE, :class:`featlab.attacks.APGD`; the authors' default).
        loss: "wgan" (default, as the reference code) or "bce" (standard GAN loss).
        lr_ec, lr_e, lr_d: SGD learning rates of E+C, E alone, D (defaults 0.1, 0.5, 0.5: MNIST).
        momentum: SGD momentum (0.9); weight_decay: on E+C only (1e-4).
        game: True (default): the full game. False: the mechanism ablation: step (4), the encoder's
            update against D, is switched off; D still trains and reports how separable the two
            embeddings are, but nothing pushes E to close the gap (so E+C learn from clean data only).
        micro_batch: None (default): every forward and backward sees the whole batch. An int: they run on
            parts of that many images and the parts' gradients are summed, weighted by their share (gradient
            accumulation): the same update in less memory, and, with the per-rank batch size, exactly the
            kernels and sums two ranks under torchrun compute (tests/test_distributed.py compares them).

    ``optimizer_ec`` is meant to be the Trainer's optimiser; the objective also owns ``optimizer_e``
    and ``optimizer_d`` and declares them in :meth:`optimizers`, so the Trainer applies its LR
    schedule to all three (as the reference code does) and checkpoints them. Under a Trainer every
    forward pass runs in the trainer's autocast (bf16 on the fast path); D itself always runs in fp32.
    Logs are tensors (no device sync); the step-by-step methods used by hand return the same.
    """

    name = "afd"
    own_gradients = True        # under torchrun it all-reduces its gradients itself (no DDP wrapper)

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 40, step_size: float = 0.01,
                 attack: str = "pgd", loss: str = "wgan", lr_ec: float = 0.1, lr_e: float = 0.5, lr_d: float = 0.5,
                 momentum: float = 0.9, weight_decay: float = 1e-4, game: bool = True, micro_batch: int | None = None):
        for name in ("encoder", "head", "embed"):
            if not hasattr(model, name):
                raise TypeError(f"model must be a featlab model with encoder, head and embed; it has no {name!r}")
        check_number("eps", eps, low=0.0, high=1.0)
        check_number("steps", steps, low=1, integer=True)
        check_choice("attack", attack, ("pgd", "apgd-ce"))
        check_choice("loss", loss, ("wgan", "bce"))
        for n, v in (("lr_ec", lr_ec), ("lr_e", lr_e), ("lr_d", lr_d)):
            check_number(n, v, low=0.0, low_open=True)
        self.model, self.eps, self.steps, self.step_size = model, float(eps), int(steps), float(step_size)
        self.attack_name, self.loss_name = attack, loss
        dim = model.embedding_dim
        self.discriminator = ProjectionDiscriminator(dim, model.num_classes)
        self.optimizer_ec = torch.optim.SGD(model.parameters(), lr=lr_ec, momentum=momentum, weight_decay=weight_decay)
        self.optimizer_e = torch.optim.SGD(model.encoder.parameters(), lr=lr_e, momentum=momentum)
        self.optimizer_d = torch.optim.SGD(self.discriminator.parameters(), lr=lr_d, momentum=momentum)
        if not isinstance(game, bool):
            raise TypeError(f"game must be True (the full AFD game) or False (the ablation), got {game!r}")
        self.game = game
        if micro_batch is not None:
            check_number("micro_batch", micro_batch, low=1, integer=True)
        self.micro_batch = None if micro_batch is None else int(micro_batch)
        self.hparams = dict(eps=eps, steps=steps, step_size=step_size, attack=attack, loss=loss, lr_ec=lr_ec,
                            lr_e=lr_e, lr_d=lr_d, momentum=momentum, weight_decay=weight_decay, game=game)
        self.device: torch.device | None = None

    def __repr__(self) -> str:
        return "AFD(" + ", ".join(f"{k}={v!r}" for k, v in self.hparams.items()) + ")"

    def bind(self, trainer) -> None:
        super().bind(trainer)
        if trainer.model is not self.model:
            raise ValueError("AFD must be given the same model as the Trainer")
        if trainer.optimizer is not self.optimizer_ec:
            raise ValueError("optimizer: pass AFD's own optimizer_ec to the Trainer (Trainer(model, afd, "
                             "optimizer=afd.optimizer_ec)), so E+C updates, schedules and checkpoints use it")
        self.discriminator.to(trainer.device)
        distributed.broadcast_module(self.discriminator)     # under torchrun: rank 0's D everywhere

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers the Trainer schedules and checkpoints besides its own: D's, and E's when the game is
        on (with ``game=False`` E's adversarial step never runs, so its optimiser never steps: a schedule on it
        would only warn that the scheduler stepped before the optimiser)."""
        return ({"optimizer_e": self.optimizer_e} if self.game else {}) | {"optimizer_d": self.optimizer_d}

    def _autocast(self):
        trainer = getattr(self, "trainer", None)
        return trainer.autocast() if trainer is not None else contextlib.nullcontext()

    def _score(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """D's scores, computed in fp32 even inside autocast (D is tiny; its spectral norms stay exact)."""
        with torch.autocast(h.device.type, enabled=False):
            return self.discriminator(h.float(), y)

    def _score_parts(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """D's scores of each (embedding, label) part. D's spectral norms advance their power iteration
        once per call in train mode, so only the first part advances it and the other parts reuse its
        vectors: the same normalised weights every rank of a torchrun job uses for its one part."""
        scores = [self._score(*parts[0])]
        if len(parts) > 1:
            spectral = [m for m in self.discriminator.modules() if type(m).__name__ == "_SpectralNorm"]
            modes = [m.training for m in spectral]
            try:
                for m in spectral:
                    m.training = False           # eval mode of a spectral norm: no power iteration
                scores += [self._score(h, y) for h, y in parts[1:]]
            finally:
                for m, mode in zip(spectral, modes):
                    m.training = mode
        return scores

    # -- the pieces ---------------------------------------------------------------------------
    def make_adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.attack_name == "pgd":
            with self._autocast():
                return PGD(self.model, eps=self.eps, steps=self.steps, step_size=self.step_size)(x, y)
        return apgd_ce_examples(self.model, x, y, self.eps, self.steps, autocast=self._autocast())

    def discriminator_losses(self, s_clean: torch.Tensor, s_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D's loss, E's adversarial loss) from D's scores on clean and adversarial embeddings
        (:func:`featlab.defenses.afd_losses` with this objective's ``loss``)."""
        return afd_losses(s_clean, s_adv, self.loss_name)

    # -- micro-batches and gradients ---------------------------------------------------------------
    def _chunks(self, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """The batch as ``micro_batch``-sized parts (one part when ``micro_batch`` is None)."""
        size = self.micro_batch or len(tensors[0])
        return list(zip(*(t.split(size) for t in tensors)))

    @staticmethod
    def _fractions(chunks) -> list[float]:
        """Each part's share of this process's batch (the weights of its loss)."""
        n = sum(len(c[0]) for c in chunks)
        return [len(c[0]) / n for c in chunks]

    def _descend(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], losses: list[torch.Tensor],
                 fractions: list[float], extra: list[torch.Tensor] = ()) -> tuple[torch.Tensor, list]:
        """One update: each part's gradient times its share of the global batch, summed over the parts and
        (under torchrun) over the ranks, then ``optimizer.step()``. Returns the gradient norm and the
        gradients of ``extra[i]`` (an input) from part i. Two ranks of 64 images and one process in parts
        of 64 add the same per-part gradients in the same order, so their updates agree to the last bits."""
        trainer = getattr(self, "trainer", None)
        share = trainer.shard_weight if trainer is not None else 1.0
        total: list[torch.Tensor | None] = [None] * len(params)
        extra_grads = []
        for i, (loss, f) in enumerate(zip(losses, fractions)):
            inputs = list(params) + ([extra[i]] if extra else [])
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            if extra:
                extra_grads.append(grads[-1])
                grads = grads[:-1]
            for j, g in enumerate(grads):
                if g is not None:
                    g = g.float() * (f * share)
                    total[j] = g if total[j] is None else total[j] + g
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, total):
            if g is not None:
                p.grad = g.to(p.dtype)
        distributed.average_gradients(params, weight=1.0)        # each rank's gradient is already weighted
        gn = _grad_norm(params)
        optimizer.step()
        return gn, extra_grads

    # -- the three updates --------------------------------------------------------------------------
    def classifier_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """(2) Update E and C with cross-entropy on clean inputs."""
        return self._classifier_update(self._chunks(x, y))

    def _classifier_update(self, chunks) -> dict[str, torch.Tensor]:
        self.model.train()
        fr = self._fractions(chunks)
        params = [p for p in self.model.parameters() if p.requires_grad]
        xs, ces, logits = [], [], []
        for xc, yc in chunks:
            xc = xc.detach().requires_grad_(True)  # the input gradient comes with the same backward pass
            with self._autocast():
                out = self.model.head(self.model.embed(xc))
                ces.append(nn.functional.cross_entropy(out, yc))
            xs.append(xc)
            logits.append(out.detach())
        gn, x_grads = self._descend(self.optimizer_ec, params, ces, fr, extra=xs)
        y = torch.cat([c[1] for c in chunks])
        # per-example input-gradient norm of the clean loss (x part size: the mean loss divides by it)
        input_gn = torch.cat([g.detach().float().flatten(1).norm(dim=1) * len(g) for g in x_grads]).mean()
        return {"ce_clean": sum(f * c.detach() for f, c in zip(fr, ces)), "grad_norm_ec": gn, "input_grad_norm": input_gn,
                "train_acc": 100.0 * (torch.cat(logits).argmax(1) == y).float().mean()}

    def discriminator_step(self, h_clean: torch.Tensor, h_adv: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """(3) Update D to score clean embeddings high and adversarial ones low (embeddings fixed).

        D's accuracy uses the midpoint of the two mean scores as threshold (WGAN scores have no
        fixed zero), measured before the update.
        """
        return self._discriminator_update(self._chunks(h_clean, h_adv, y))

    def _discriminator_update(self, chunks) -> dict[str, torch.Tensor]:
        self.discriminator.train()
        s_c = self._score_parts([(hc.detach(), yc) for hc, _, yc in chunks])
        s_a = self._score_parts([(ha.detach(), yc) for _, ha, yc in chunks])
        scores = list(zip(s_c, s_a))
        d_losses = [self.discriminator_losses(sc, sa)[0] for sc, sa in scores]
        fr = self._fractions(chunks)
        gn, _ = self._descend(self.optimizer_d, list(self.discriminator.parameters()), d_losses, fr)
        with torch.no_grad():
            s_clean, s_adv = torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores])
            thr = (s_clean.mean() + s_adv.mean()) / 2
            acc_c, acc_a = (s_clean > thr).float().mean(), (s_adv < thr).float().mean()
        return {"d_loss": sum(f * d.detach() for f, d in zip(fr, d_losses)), "d_acc_clean": 100.0 * acc_c,
                "d_acc_adv": 100.0 * acc_a, "d_score_gap": (s_clean.mean() - s_adv.mean()).detach(), "grad_norm_d": gn}

    def encoder_step(self, x_adv: torch.Tensor, y: torch.Tensor, h_adv: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(4) Update E alone so that D scores E(x_adv) as clean (D and C are not changed).

        ``h_adv``: E(x_adv) already computed with gradients, else computed here.
        """
        self.model.train()
        if h_adv is not None:
            return self._encoder_update([(h_adv, y)])
        return self._encoder_update([(self._embed(xc), yc) for xc, yc in self._chunks(x_adv, y)])

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.embed(x)

    def _encoder_update(self, chunks) -> dict[str, torch.Tensor]:
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        try:
            zero = torch.zeros(1, device=chunks[0][0].device)
            e_losses = [self.discriminator_losses(zero, s)[1] for s in self._score_parts(chunks)]
            fr = self._fractions(chunks)
            gn, _ = self._descend(self.optimizer_e, list(self.model.encoder.parameters()), e_losses, fr)
        finally:
            for p in self.discriminator.parameters():
                p.requires_grad_(True)
        return {"e_adv_loss": sum(f * e.detach() for f, e in zip(fr, e_losses)), "grad_norm_e": gn}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One full AFD step on a batch; returns every loss term, D's accuracy and gradient norms.

        Cost: the attack, two forward/backward passes (clean for E+C, adversarial for E) and one
        clean forward; E(x_adv) is computed once and serves both D's update (detached) and E's.
        With ``micro_batch``, every forward and backward runs on parts of that size.
        """
        if not inside_checked_scope():            # by hand (the Trainer checked its data once already)
            check_model_input(self.model, x)
            check_labels(y, len(x), getattr(self.model, "num_classes", None))
        device = next(self.model.parameters()).device
        self.discriminator.to(device)
        x, y = x.to(device), y.to(device)
        chunks = self._chunks(x, y)
        x_adv = [self.make_adversarial(xc, yc) for xc, yc in chunks]                # (1)
        logs = self._classifier_update(chunks)                                      # (2)
        self.model.train()
        with torch.no_grad():          # both embeddings from the same (updated) encoder
            h_clean = [self._embed(xc) for xc, _ in chunks]
        h_adv = [self._embed(xa) for xa in x_adv]
        ys = [yc for _, yc in chunks]
        logs.update(self._discriminator_update(list(zip(h_clean, h_adv, ys))))     # (3)
        if self.game:
            logs.update(self._encoder_update(list(zip(h_adv, ys))))                # (4)
        with torch.no_grad(), self._autocast():
            pred = torch.cat([self.model.head(h.detach()) for h in h_adv]).argmax(1)
        logs["train_adv_acc"] = 100.0 * (pred == y).float().mean()
        logs["loss"] = logs["ce_clean"]
        return logs

    # -- Trainer protocol -------------------------------------------------------------------------
    #: D's balanced accuracy (percent) below which a whole epoch counts as "D at chance"
    chance_band = 55.0

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self._epoch_d_acc: list[torch.Tensor] = []
        self._epoch = epoch + 1

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logs = self.step(x, y)
        logs["d_acc"] = (logs["d_acc_clean"] + logs["d_acc_adv"]) / 2      # D's balanced accuracy on the batch
        if hasattr(self, "_epoch_d_acc"):
            self._epoch_d_acc.append(logs["d_acc"])
        return logs

    def epoch_logs(self) -> dict[str, float]:
        """D's best and mean balanced accuracy over the epoch's steps; warns when even the best step
        stayed at chance (then D never told clean from adversarial embeddings this epoch: either it
        did not learn, or E won; ``featlab.probe`` has a post-hoc discriminator to tell which)."""
        accs = getattr(self, "_epoch_d_acc", [])
        if not accs:
            return {}
        t = torch.stack(accs).float()
        best, mean = float(t.max()), float(t.mean())
        if best < self.chance_band:
            warnings.warn(f"AFD epoch {self._epoch}: the discriminator sat at chance for the whole epoch (balanced "
                          f"accuracy at most {best:.1f}%, mean {mean:.1f}%): it never told clean from adversarial "
                          f"embeddings. Either D did not learn (check lr_d and grad_norm_d) or the encoder won; a "
                          f"fresh probe discriminator on the frozen encoder tells which.", AFDGameWarning, stacklevel=2)
        return {"d_acc_epoch_mean": mean, "d_acc_epoch_best": best}

    def state_dict(self) -> dict[str, Any]:
        """D's weights (the Trainer checkpoints ``optimizer_e`` and ``optimizer_d`` via :meth:`optimizers`)."""
        return {"discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.discriminator.load_state_dict(state["discriminator"])

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.hparams}
