"""Training objectives: what one batch of training does (:class:`Objective`), and the classifier
objectives "standard", "pgd_at" (Madry et al. 2018) and "trades" (Zhang et al. 2019)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._utils import check_choice, check_number, eval_mode
from ..attacks import PGD, step_size_for
from ..attacks.apgd import apgd_ce_examples

if TYPE_CHECKING:          # for the annotation only: loop imports this module
    from .loop import Trainer


class Objective:
    """What one training batch does. Override ``loss`` (one optimiser, the trainer's) or
    ``train_step`` (several optimisers, e.g. AFD). Extra modules and state go through
    ``state_dict`` / ``load_state_dict`` so checkpoints carry them.
    """

    name = "objective"
    #: True for objectives that step their own optimisers on pieces of the model (AFD): under torchrun
    #: the trainer does not wrap the model in DDP and the objective all-reduces its gradients itself
    own_gradients = False

    def bind(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based); schedules (eps ramps) live here."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return (scalar loss to minimise, logits used for train accuracy, extra logs)."""
        raise NotImplementedError("an Objective must implement loss() or train_step()")

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One update; returns logs as detached scalar tensors (or floats), never synchronising."""
        t = self.trainer
        t.model.train()
        with t.autocast():
            loss, logits, logs = self.loss(t.forward_model, x, y)
        t.optimizer.zero_grad(set_to_none=True)
        # under torchrun DDP averages over ranks; this weight makes it the mean over the global batch
        (loss * (t.shard_weight * t.world_size) if t.world_size > 1 else loss).backward()
        t.optimizer.step()
        out = {"loss": loss.detach(), "train_acc": 100.0 * (logits.detach().argmax(1) == y).float().mean()}
        out.update({k: v.detach() if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()})
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers this objective owns besides the trainer's (AFD: E alone and D). The trainer
        applies its LR schedule to each of them too, and checkpoints them."""
        return {}

    def epoch_logs(self) -> dict[str, float]:
        """Extra numbers for the epoch's history record (called once per epoch, after the steps)."""
        return {}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The classifier whose accuracy the trainer reports (the denoiser objective wraps it)."""
        return model

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Standard(Objective):
    """Plain cross-entropy on clean images; ``label_smoothing`` (default 0) as in
    ``torch.nn.functional.cross_entropy`` (the fast CIFAR recipes use 0.2)."""

    name = "standard"

    def __init__(self, label_smoothing: float = 0.0):
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.label_smoothing = float(label_smoothing)

    def loss(self, model, x, y):
        logits = model(x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits, {}

    def config(self):
        return {"name": self.name, **({"label_smoothing": self.label_smoothing} if self.label_smoothing else {})}


class PGDAT(Objective):
    """PGD adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083):
    cross-entropy on PGD examples made against the current model (in eval mode).

    Args:
        eps: Linf radius in pixel units (default 0.3).
        steps: PGD steps per batch (default 10).
        step_size: default 2.5 * eps / steps.
        eps_start: the start of the eps ramp (default: no ramp).
        ramp_epochs: epoch e (0-based) trains at eps_start + min(1, (e + 1) / ramp_epochs) * (eps - eps_start),
            so eps reaches its final value at epoch ``ramp_epochs`` (default 0: no ramp).
        norm: "linf" (default) or "l2".
        attack: "pgd" (default) or "apgd-ce" (featlab's batched APGD-CE with ``steps`` iterations, Linf
            only: the training attack of the AFD code, so PGD-AT and AFD can be compared at one budget).
    """

    name = "pgd_at"

    def __init__(self, eps: float = 0.3, steps: int = 10, step_size: float | None = None,
                 eps_start: float | None = None, ramp_epochs: int = 0, norm: str = "linf", attack: str = "pgd"):
        check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
        check_choice("attack", attack, ("pgd", "apgd-ce"))
        if attack == "apgd-ce" and norm != "linf":
            raise ValueError(f"attack: 'apgd-ce' trains in Linf only; norm is {norm!r} (allowed with it: 'linf')")
        check_number("steps", steps, low=1, integer=True)
        check_number("ramp_epochs", ramp_epochs, low=0, integer=True)
        if eps_start is not None:
            check_number("eps_start", eps_start, low=0.0, high=eps)
        self.eps, self.steps, self.step_size, self.norm = float(eps), int(steps), step_size, norm
        self.eps_start, self.ramp_epochs = eps_start, int(ramp_epochs)
        self.attack_name = attack
        self.current_eps = self.eps

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        if self.eps_start is None or self.ramp_epochs == 0:
            self.current_eps = self.eps
        else:
            frac = min(1.0, (epoch + 1) / self.ramp_epochs)
            self.current_eps = self.eps_start + frac * (self.eps - self.eps_start)

    def attack(self, model: nn.Module) -> PGD:
        step = self.step_size if self.step_size is not None else step_size_for(self.current_eps, self.steps)
        return PGD(model, eps=self.current_eps, steps=self.steps, step_size=step, norm=self.norm)

    def loss(self, model, x, y):
        if self.attack_name == "apgd-ce":
            x_adv = apgd_ce_examples(model, x, y, self.current_eps, self.steps)   # in the trainer's autocast
        else:
            x_adv = self.attack(model)(x, y)      # the attack runs the model in eval mode
        logits = model(x_adv)
        return nn.functional.cross_entropy(logits, y), logits, {"eps": self.current_eps}

    def config(self):
        return {"name": self.name, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "eps_start": self.eps_start, "ramp_epochs": self.ramp_epochs, "norm": self.norm,
                **({"attack": self.attack_name} if self.attack_name != "pgd" else {})}


class TRADES(Objective):
    """TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573): clean cross-entropy plus
    ``beta`` x KL(f(x) || f(x_adv)), where x_adv maximises that KL inside the Linf ball
    (PGD started at x + 0.001 N(0, 1), as the authors do).

    Args:
        eps: Linf radius in pixel units (default 0.3).
        steps: inner PGD steps (default 10); step_size default 2.5 * eps / steps.
        beta: weight of the robustness term (default 6.0, the paper's choice).
    """

    name = "trades"

    def __init__(self, eps: float = 0.3, steps: int = 10, step_size: float | None = None, beta: float = 6.0):
        check_number("eps", eps, low=0.0, high=1.0)
        check_number("steps", steps, low=1, integer=True)
        check_number("beta", beta, low=0.0)
        self.eps, self.steps, self.beta = float(eps), int(steps), float(beta)
        self.step_size = step_size if step_size is not None else step_size_for(eps, steps)

    def loss(self, model, x, y):
        with torch.no_grad(), eval_mode(model):
            p_clean = torch.softmax(model(x), dim=1)

        def kl(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            return nn.functional.kl_div(torch.log_softmax(out, dim=1), p_clean, reduction="none").sum(1)

        x_adv = PGD(model, eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=0.001,
                    loss_fn=kl)(x, y)
        logits = model(x)
        robust = nn.functional.kl_div(torch.log_softmax(model(x_adv), dim=1), torch.softmax(logits, dim=1),
                                      reduction="batchmean")
        natural = nn.functional.cross_entropy(logits, y)
        return natural + self.beta * robust, logits, {"natural": natural.detach(), "robust_kl": robust.detach()}

    def config(self):
        return {"name": self.name, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "beta": self.beta}


OBJECTIVES: dict[str, type[Objective]] = {"standard": Standard, "pgd_at": PGDAT, "trades": TRADES}


def create_objective(name: str, **kwargs: Any) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"method: unknown objective {name!r}; allowed: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)


