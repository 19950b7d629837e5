"""featlab's application layer: what ``featlab train``, ``eval``, ``probe`` and ``separability`` do, as
functions of typed configs that return records. The CLI parses flags into these configs and calls them;
notebooks and scripts call the same functions.

    >>> history = train(TrainConfig(out="runs/mnist_pgd_at", method="pgd_at", epochs=8, optimizer="sgd"))
    >>> target = resolve(run="runs/mnist_pgd_at")             # or pretrained=..., control=..., module=...
    >>> records = evaluate(target, EvalConfig(attacks=("pgd40", "autoattack"), eps=(0.3,)))

Any ``nn.Module`` is a target: ``resolve(module=models.wrap(my_cnn, mean, std, shape), dataset="cifar10")``,
or from the command line ``featlab eval --module my_file.py:build --weights w.pt --dataset cifar10``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import data, distributed, models, pretrained, runs
from ._utils import check_choice, check_number, get_device, git_commit, seed_everything
from .attacks import PGD, from_spec, parse, step_size_for, strongest_pgd
from .checklist import checklist, report_checks
from .checkpoint import atomic_write_text
from .evaluate import audit, preprocessing_defense
from .metrics import accuracy, robust_accuracy
from .results import LARGE_EPS_ROLE, device_description, record, result_name, write_result

METHODS = ("standard", "pgd_at", "trades", "afd", "denoiser")
CONTROLS = ("binarize", "bits2", "bits4", "median3")


class ConfigError(ValueError):
    """A config value is wrong, or two disagree: ``field`` names the setting (the CLI reports its flag)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field, self.reason = field_name, message


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)


def _number(name: str, value: Any, **rule: Any) -> None:
    """featlab's number check (``_utils.check_number``), raised as a ConfigError naming the setting."""
    try:
        check_number(name, value, **rule)
    except ValueError as e:
        raise ConfigError(name, str(e).removeprefix(name).strip()) from None


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    try:
        check_choice(name, value, allowed)
    except ValueError as e:
        raise ConfigError(name, str(e).removeprefix(name).removeprefix(":").strip()) from None


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """One training run (the flags of ``featlab train``; ``featlab train --help`` explains each)."""

    out: str
    dataset: str | None = None          # default: the model's dataset
    model: str = "mnist_cnn"
    method: str = "standard"
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "adam"             # afd always uses its own SGD for E+C
    nesterov: bool = True
    lr: float | None = None             # default: 1e-3 for adam, 0.1 for sgd and afd's E+C
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    lr_schedule: str = "step"
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    eps: float = 0.3
    attack_steps: int = 10
    step_size: float | None = None      # default: attacks.step_size_for(eps, attack_steps)
    beta: float = 6.0
    afd_loss: str = "wgan"
    afd_no_game: bool = False
    train_attack: str = "pgd"
    lr_e: float = 0.5
    lr_d: float = 0.5
    eps_start: float | None = None
    ramp_epochs: int = 0
    limit: int | None = None
    classifier_run: str | None = None
    extractor_run: str | None = None
    denoiser: str = "residual"
    feature_taps: tuple[str, ...] | None = None
    pixel_weight: float = 0.0
    eps_min: float = 0.05
    width: int | None = None
    depth: int = 2
    eval_n: int = 1000
    seed: int = 0
    device: str = "auto"
    sync_bn: bool = False
    precision: str = "auto"
    memory_format: str = "auto"
    command: str | None = None          # what reproduces this run (the CLI writes its own command line)

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("optimizer", ("adam", "sgd")), ("lr_schedule", ("step", "triangle")),
                              ("afd_loss", ("wgan", "bce")), ("train_attack", ("pgd", "apgd-ce")),
                              ("model", sorted(models.MODELS)), ("precision", ("auto", "fp32", "bf16")),
                              ("memory_format", ("auto", "contiguous", "channels_last"))):
            _choice(name, getattr(self, name), allowed)
        if self.dataset is not None:
            _choice("dataset", self.dataset, sorted(data.DATASETS))
        for name in ("epochs", "batch_size", "attack_steps", "depth", "eval_n"):
            _number(name, getattr(self, name), low=1, integer=True)
        _number("eps", self.eps, low=0.0, high=1.0)
        _number("label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        _require(self.lr_schedule == "step" or not self.milestones, "milestones", "is for lr_schedule step; triangle "
                                                                                    "has no drops")
        _require(not self.milestones or max(self.milestones) < self.epochs, "milestones",
                 f"{max(self.milestones or [0])} must be < epochs {self.epochs}")
        _require(self.warmup_epochs is None or (self.lr_schedule == "triangle" and self.warmup_epochs <= self.epochs),
                 "warmup_epochs", f"needs lr_schedule triangle and at most epochs {self.epochs}")
        _require(not self.label_smoothing or self.method == "standard", "label_smoothing",
                 f"is for method standard (got {self.method})")
        _require(self.method != "denoiser" or bool(self.classifier_run), "classifier_run",
                 "required with method denoiser (the frozen classifier to defend)")
        _require(self.train_attack == "pgd" or self.method in ("afd", "pgd_at"), "train_attack",
                 f"{self.train_attack} is for method afd and pgd_at (trades maximises its own KL loss)")

    @property
    def resolved_optimizer(self) -> str:
        return "sgd" if self.method == "afd" else self.optimizer   # AFD's E+C optimiser is its own SGD (authors' code)

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.resolved_optimizer == "sgd" else 1e-3)


_IDENTITY = ("dataset", "model", "method", "seed", "epochs", "objective")


def _check_out_folder(out: Path, config: dict) -> None:
    """``out`` may resume the same run; a folder holding another run is refused before anything is written."""
    old_path = out / "config.json"
    if not old_path.is_file():
        return
    try:
        old = json.loads(old_path.read_text())
    except ValueError:
        raise ConfigError("out", f"{old_path} is not readable JSON; choose another out folder") from None
    diff = {k: (old.get(k), config.get(k)) for k in _IDENTITY if old.get(k) != config.get(k)}
    _require(not diff, "out", f"{out} holds another run (saved vs now: {diff}); choose another out folder, or "
                              f"delete the folder to start over")


def _commits(config_path: Path) -> dict[str, Any]:
    """The featlab commit a run started at and, when it was resumed under other code, the commits it resumed at."""
    now = git_commit()
    if not config_path.is_file():
        return {"commit": now}
    old = json.loads(config_path.read_text())
    start = old.get("commit", "unknown")        # "unknown": a run started before featlab recorded commits
    resumed = list(old.get("resumed_at_commits", []))
    if now != start and now not in resumed:
        resumed.append(now)
    return {"commit": start, **({"resumed_at_commits": resumed} if resumed else {})}


def _denoiser_parts(c: TrainConfig, device: torch.device):
    from .defenses import FeatureLoss, create_denoiser
    from .train import DenoiserObjective
    classifier, ccfg = pretrained.load_classifier(c.classifier_run, device)
    extractor, ecfg = pretrained.load_classifier(c.extractor_run, device) if c.extractor_run else (classifier, ccfg)
    _require(ecfg["dataset"] == ccfg["dataset"], "extractor_run", f"a {ecfg['dataset']} model cannot extract "
                                                                  f"features of the classifier's {ccfg['dataset']} images")
    taps = {t: 1.0 for t in c.feature_taps} if c.feature_taps is not None else None
    loss = FeatureLoss(extractor, taps=taps, pixel_weight=c.pixel_weight)
    objective = DenoiserObjective(classifier, loss, eps_range=(c.eps_min, c.eps), pgd_steps=c.attack_steps, seed=c.seed)
    model = create_denoiser(c.denoiser, channels=classifier.input_shape[0], width=c.width, depth=c.depth)
    extra = {"classifier_run": c.classifier_run, "classifier_model": ccfg["model"],
             "extractor_run": c.extractor_run or c.classifier_run, **model.config()}
    return model, objective, ccfg["dataset"], extra


def _classifier_parts(c: TrainConfig):
    """The model and objective of a classifier run (every method but the denoiser)."""
    from .train import AFD, create_objective
    dataset = c.dataset or models.default_dataset(c.model)
    model = models.create(c.model, num_classes=data.info(dataset).num_classes)
    if c.method == "afd":
        objective = AFD(model, eps=c.eps, steps=c.attack_steps, step_size=c.step_size or step_size_for(c.eps, c.attack_steps),
                        attack=c.train_attack, loss=c.afd_loss, lr_ec=c.resolved_lr, lr_e=c.lr_e, lr_d=c.lr_d,
                        game=not c.afd_no_game)
        return model, objective, dataset, {}
    kwargs: dict[str, Any] = {
        "standard": lambda: dict(label_smoothing=c.label_smoothing),
        "pgd_at": lambda: dict(eps=c.eps, steps=c.attack_steps, step_size=c.step_size, eps_start=c.eps_start,
                               ramp_epochs=c.ramp_epochs, attack=c.train_attack),
        "trades": lambda: dict(eps=c.eps, steps=c.attack_steps, step_size=c.step_size, beta=c.beta),
    }[c.method]()
    return model, create_objective(c.method, **kwargs), dataset, {}


def _optimizer(c: TrainConfig, model: nn.Module, objective: Any) -> torch.optim.Optimizer:
    if c.method == "afd":
        return objective.optimizer_ec          # E + C: SGD as in the AFD code; the schedule applies to it
    if c.resolved_optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=c.resolved_lr)
    return torch.optim.SGD(model.parameters(), lr=c.resolved_lr, momentum=0.9, weight_decay=c.weight_decay,
                           nesterov=c.nesterov)


def _schedule(c: TrainConfig, opt: torch.optim.Optimizer, n_train: int) -> tuple[Any, str, dict[str, Any]]:
    """(scheduler or None, the interval it steps at, what the run's config says about it)."""
    from .train import triangle_schedule_for
    if c.lr_schedule == "triangle":
        sched, warmup = triangle_schedule_for(opt, c.epochs, n_train, c.batch_size, c.warmup_epochs)
        return sched, "step", {"lr_schedule": "triangle", "warmup_epochs": warmup}
    milestones = list(c.milestones)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1) if milestones else None
    return sched, "epoch", {"lr_schedule": "step", "milestones": milestones}


def train(c: TrainConfig) -> list[dict[str, Any]]:
    """Train one run into the folder ``c.out`` (resumes when it holds this run); returns its per-epoch history."""
    from .train import Trainer
    seed_everything(c.seed)
    device = distributed.init(c.device)        # under torchrun: joins the process group (gloo / nccl)
    parts = _denoiser_parts(c, device) if c.method == "denoiser" else _classifier_parts(c)
    model, objective, dataset, extra = parts
    identity = {"dataset": dataset, "model": c.model if c.method != "denoiser" else f"{c.denoiser}_denoiser",
                "method": c.method, "epochs": c.epochs, "seed": c.seed, "objective": objective.config()}
    out = Path(c.out)
    _check_out_folder(out, json.loads(json.dumps(identity)))     # before any data or file is touched
    x, y = data.load(dataset, "train", limit=c.limit, seed=c.seed)
    xt, yt = data.load(dataset, "test", limit=c.eval_n, seed=c.seed)
    opt = _optimizer(c, model, objective)
    sched, interval, schedule_config = _schedule(c, opt, len(y))
    out.mkdir(parents=True, exist_ok=True)
    optimizer = c.resolved_optimizer
    config = {**identity, "optimizer": optimizer, "lr": c.resolved_lr, **schedule_config,
              **({"nesterov": False} if optimizer == "sgd" and not c.nesterov else {}), "batch_size": c.batch_size,
              "limit": c.limit, "command": c.command, "device": device_description(device),
              "world_size": distributed.world_size(), "sync_batchnorm": c.sync_bn, **extra}
    eval_attack = None if c.method == "standard" else (lambda m: PGD(m, eps=c.eps, steps=10))
    augment = data.cifar_augment if dataset.startswith("cifar") else None
    t0 = time.time()
    trainer = Trainer(model, objective, epochs=c.epochs, batch_size=c.batch_size, optimizer=opt, scheduler=sched,
                      scheduler_interval=interval, augment=augment, device=device, checkpoint=str(out / "checkpoint.pt"),
                      seed=c.seed, eval_attack=eval_attack, precision=c.precision, memory_format=c.memory_format,
                      sync_batchnorm=c.sync_bn)
    config.update(trainer.fast.describe())        # the precision and memory format this run trains in
    config.update(_commits(out / "config.json"))
    if distributed.is_main():
        atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    history = trainer.fit(x, y, eval_data=(xt, yt))
    if distributed.is_main():
        atomic_write_text(out / "history.json",
                          json.dumps({"history": history, "wall_s_this_call": time.time() - t0}, indent=2) + "\n")
    return history


# --------------------------------------------------------------------------- what to evaluate
@dataclass
class Target:
    """What an evaluation looks at: a run folder, a shipped model, a control, or any wrapped ``nn.Module``,
    with what its records say about it."""

    model: nn.Module
    config: dict[str, Any]            # dataset, model, method, the training command and device, classifier_run
    trained: dict[str, Any]           # epochs, train_wall_s (and the shipped weights' hash)
    label: str                        # names the result files
    classifier_ref: str | None = None  # a denoiser's or control's classifier: run folder or pretrained:NAME
    loaded_classifier: nn.Module | None = None     # already loaded (a control reads its config from it)
    run: str | None = None            # the run folder the model was trained into (records carry it as "run")

    def classifier(self, device: torch.device) -> nn.Module:
        if self.loaded_classifier is None:
            self.loaded_classifier = pretrained.load_classifier(self.classifier_ref, device)[0]
        return self.loaded_classifier

    @property
    def is_preprocessing(self) -> bool:
        return self.config["method"] in ("denoiser", "control")


def _ref_label(ref: str) -> str:
    return ref.split(":", 1)[1] if ref.startswith("pretrained:") else Path(ref).name


def load_module(ref: str, weights: str | None = None) -> nn.Module:
    """A reader's classifier from ``FILE.py:CALLABLE`` or ``package.module:CALLABLE`` (the callable returns
    the ``nn.Module``; its code runs, as an import does), with a state dict from ``weights`` (loaded with
    ``weights_only=True``: weights cannot run code)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ValueError(f"module: FILE.py:CALLABLE or package.module:CALLABLE, got {ref!r}")
    where, attr = ref.split(":")
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise ValueError(f"module: {where} is not a file")
        spec = importlib.util.spec_from_file_location(f"featlab_user_{Path(where).stem}", where)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"module: cannot import {where} ({e})") from None
    if not callable(getattr(mod, attr, None)):
        raise ValueError(f"module: {where} has no callable {attr!r}")
    net = getattr(mod, attr)()
    if not isinstance(net, nn.Module):
        raise ValueError(f"module: {ref}() returned {type(net).__name__}, not an nn.Module")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(f"weights: {weights} does not fit {ref}(): {str(e).splitlines()[0]}") from None
    return net


def user_model(ref: str, dataset: str, weights: str | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> models.WrappedModel:
    """A reader's classifier (:func:`load_module`'s ``ref`` and ``weights``) wrapped for ``dataset``'s images
    with its normalisation inside (:func:`featlab.models.wrap`): what ``featlab eval --module`` and notebook 05's
    ``USER_MODEL`` evaluate."""
    _choice("dataset", dataset, sorted(data.DATASETS))
    return models.wrap(load_module(ref, weights), mean=mean, std=std, input_shape=data.info(dataset).shape,
                       num_classes=data.info(dataset).num_classes, name=ref.rsplit(":", 1)[-1])


def resolve(run: str | None = None, pretrained_name: str | None = None, control: str | None = None,
            module: nn.Module | None = None, dataset: str | None = None, classifier_run: str | None = None,
            label: str | None = None, command: str | None = None, device: torch.device | str = "cpu") -> Target:
    """The one thing to evaluate: exactly one of ``run`` (a run folder), ``pretrained_name`` (a shipped model),
    ``control`` (in front of ``classifier_run``) or ``module`` (any classifier, wrapped with
    :func:`featlab.models.wrap`, on ``dataset``). A denoiser with another ``classifier_run`` than its own is
    evaluated in front of that one (transfer)."""
    given = [n for n, v in (("run", run), ("pretrained_name", pretrained_name), ("control", control),
                            ("module", module)) if v is not None]
    _require(len(given) == 1, "run", f"exactly one of run, pretrained_name, control, module is needed; got {given}")
    device = torch.device(device)
    if control is not None:
        from .defenses import create_control
        check_choice("control", control, CONTROLS)
        _require(classifier_run is not None, "classifier_run", "required with control (the classifier the control "
                                                               "defends)")
        clf, ccfg = pretrained.load_classifier(classifier_run, device)
        config = {"dataset": ccfg["dataset"], "model": control, "method": "control", "command": None,
                  "device": None, "classifier_run": classifier_run}
        return Target(create_control(control).to(device), config, {"epochs": 0, "train_wall_s": 0.0},
                      f"control_{control}_{_ref_label(classifier_run)}", classifier_run, clf)
    if module is not None:
        _require(isinstance(module, models.FeatureModel), "module", "wrap it first: featlab.models.wrap(module, "
                                                                    "mean, std, input_shape)")
        _require(dataset is not None, "dataset", f"required with module; allowed: {sorted(data.DATASETS)}")
        check_choice("dataset", dataset, sorted(data.DATASETS))
        _require(tuple(module.input_shape) == tuple(data.info(dataset).shape), "module",
                 f"takes {tuple(module.input_shape)} images, {dataset} has {tuple(data.info(dataset).shape)}")
        name = label or module.name or type(module).__name__
        config = {"dataset": dataset, "model": name, "method": "user", "command": command, "device": None,
                  "classifier_run": None}
        return Target(module.to(device).eval(), config, {"epochs": None, "train_wall_s": None}, f"user_{name}")
    if pretrained_name is not None:
        entry = pretrained.info(pretrained_name)
        key = pretrained.ALIASES.get(pretrained_name, pretrained_name)
        classifier = f"pretrained:{entry['classifier']}" if entry.get("classifier") else None
        config = {"dataset": entry["dataset"], "model": entry["model"], "method": entry["method"],
                  "command": entry["train_command"], "device": entry["train_device"], "classifier_run": classifier}
        trained = {"epochs": entry["epochs"], "train_wall_s": entry["train_wall_s"],
                   "weights": f"featlab.pretrained:{key} (float16, sha256 {entry['sha256'][:12]})"}
        target = Target(pretrained.load(key, device), config, trained, f"pretrained_{key}", classifier,
                        run=entry.get("run"))
    else:
        r = runs.load(run, device)
        target = Target(r.model, r.config, r.train_summary, r.folder.name, r.config.get("classifier_run"),
                        run=r.folder.name)
    if classifier_run is not None:
        _require(target.config["method"] == "denoiser", "classifier_run",
                 "only for a denoiser (defend another classifier: transfer) or a control")
        if classifier_run != target.config.get("classifier_run"):      # transfer: a classifier it was not trained for
            target.config = {**target.config, "trained_for": target.config.get("classifier_run"),
                             "classifier_run": classifier_run}
            target.classifier_ref, target.loaded_classifier = classifier_run, None
            target.label = f"{target.label}_on_{_ref_label(classifier_run)}"
    return target


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalConfig:
    """One evaluation (the flags of ``featlab eval``)."""

    attacks: tuple[str, ...] = ("pgd40",)
    eps: tuple[float, ...] = (0.3,)
    norm: str = "linf"
    n_eval: int = 1000
    large_eps: float | None = None      # the checklist's "reaches ~0" point: default 1.0 in Linf; 0 for none
    batch_size: int = 500
    seed: int = 0
    results_dir: str = "results"
    command: str | None = None

    def __post_init__(self) -> None:
        _choice("norm", self.norm, ("linf", "l2"))
        _require(len(self.attacks) > 0 and len(self.eps) > 0, "attacks", "at least one attack and one eps")
        for e in self.eps:
            _number("eps", e, low=0.0, high=1.0 if self.norm == "linf" else None)
        for name in ("n_eval", "batch_size"):
            _number(name, getattr(self, name), low=1, integer=True)
        for s in self.attacks:
            try:
                parse(s)                    # an unknown spec fails here, naming the allowed ones
            except (ValueError, TypeError) as e:
                raise ConfigError("attacks", str(e).removeprefix("attacks: ")) from None

    @property
    def resolved_large_eps(self) -> float | None:
        large = self.large_eps if self.large_eps is not None else (1.0 if self.norm == "linf" else None)
        return None if large is not None and large <= 0 else large


def _partial_dir(c: EvalConfig, target: Target, n: int) -> Path:
    """Where an evaluation keeps the finished batches of every attack until its records are written: the same
    call, interrupted (a killed AutoAttack), resumes from there (:class:`featlab.metrics.BatchStore`; a batch
    of other weights or images is refused, never reused). One folder per target, images and settings."""
    settings = json.dumps([list(c.attacks), list(c.eps), c.norm, c.batch_size, c.large_eps], default=str)
    return (Path(c.results_dir) / ".partial"
            / f"{target.label}_n{n}_seed{c.seed}_{hashlib.sha256(settings.encode()).hexdigest()[:10]}")


def _drop_partial(partial: Path) -> None:
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(partial, ignore_errors=True)
        with contextlib.suppress(OSError):
            partial.parent.rmdir()           # .partial/ itself, once empty


def _base_record(target: Target, c: EvalConfig, n: int, device: torch.device) -> dict[str, Any]:
    config = target.config
    return {"dataset": config["dataset"], "model": config["model"], "method": config["method"], "n_eval": n,
            "seed": c.seed, "command": c.command, "train_command": config.get("command"),
            "commit": git_commit(),          # the code the evaluation starts with (write_result would read it at the end)
            "train_device": config.get("device"), "device": device_description(device),
            **({"train_commit": config["commit"]} if config.get("commit") else {}),
            **({"train_resumed_at_commits": config["resumed_at_commits"]} if config.get("resumed_at_commits") else {}),
            **({"train_objective": config["objective"]} if config.get("objective") else {}),   # what it was trained on
            "train_precision": config.get("precision", "fp32"),
            "train_memory_format": config.get("memory_format", "contiguous"),
            "precision": "fp32", "world_size": distributed.world_size(), **target.trained,
            **({"run": target.run} if target.run else {})}


def evaluate(target: Target, c: EvalConfig, device: torch.device | str | None = None,
             write: bool = True) -> list[dict[str, Any]]:
    """Every attack at every eps, the per-image worst case and the checklist; a preprocessing defense in every
    threat model. Returns the records and, unless ``write`` is False, writes one JSON file per attack and eps:
    ``<results_dir>/<label>_<attack>_<norm>_eps<eps>[_n<N>].json`` (``_n<N>`` when N is not 1,000; the label is the
    run folder's name, ``pretrained_<name>`` for a shipped model, ``user_<name>`` for a wrapped module)."""
    seed_everything(c.seed)
    device = get_device(device) if device is not None else next(target.model.parameters(), torch.zeros(())).device
    x, y = data.load(target.config["dataset"], "test", limit=c.n_eval, seed=c.seed)
    base = _base_record(target, c, len(x), device)
    if target.is_preprocessing:
        return _evaluate_preprocessing(target, c, target.classifier(device), x, y, base, write)
    t0 = time.time()
    large = c.resolved_large_eps
    partial = _partial_dir(c, target, len(x))
    report = audit(target.model, x, y, list(c.eps), attacks=tuple(c.attacks), norm=c.norm, large_eps=large or 0,
                   batch_size=c.batch_size, seed=c.seed, label=target.label, dataset=target.config["dataset"],
                   resume_dir=partial)
    print(report["text"])
    sanity = {"passed": report["passed"], "checks": report["checks"]}
    records = []
    for r in report["rows"] + report["worst_case"]:
        if r["attack"] == "worst-case":      # every attack of this call, per image (as AutoAttack counts)
            extra = {"attack_repr": "per-example worst case of " + " + ".join(r["attacks"]), "attacks": r["attacks"]}
        else:
            extra = {"attack_repr": repr(from_spec(r["attack"], target.model, r["eps"], norm=c.norm, seed=c.seed))}
        if r.get("resumed_batches"):     # an interrupted call's batches, read back (wall_s counts them)
            extra["resumed_batches"] = r["resumed_batches"]
            print(f"{r['attack']} at eps {r['eps']:g}: {r['resumed_batches']} batch(es) read back from {partial}")
        # "white-box" is the threat model (the attacker may see everything), also for Square, which uses no gradient
        rec = record(base, threat_model="white-box", norm=r["norm"], eps=r["eps"], attack=r["attack"], **extra,
                     clean_acc=r["clean_acc"], robust_acc=r["robust_acc"], wall_s=r["wall_s"], sanity=sanity)
        if large is not None and r["eps"] == large and large not in c.eps:
            rec["role"] = LARGE_EPS_ROLE       # featlab.results.worst_case leaves it out
        records.append(rec)
        name = result_name(target.label, r["attack"], r["norm"], r["eps"], len(x))
        where = f"  -> {write_result(name, rec, c.results_dir)}" if write else ""
        print(f"{name}: clean {r['clean_acc']:.2f}%  robust {r['robust_acc']:.2f}%{where}")
    _drop_partial(partial)
    print(f"eval wall {time.time() - t0:.1f}s")
    return records


def _evaluate_preprocessing(target: Target, c: EvalConfig, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            base: dict[str, Any], write: bool) -> list[dict[str, Any]]:
    """A preprocessing defense (a denoiser or a control) in front of its classifier: the undefended reference,
    oblivious, end-to-end and BPDA with PGD from ``pgdN[@S]``; autoattack / apgd / square end to end."""
    specs = [parse(s) for s in c.attacks]
    _require(not any(s.kind.name == "fgsm" for s in specs), "attacks",
             "a preprocessing defense is evaluated with pgdN, autoattack, apgd and square, not fgsm")
    spec = parse(strongest_pgd(list(c.attacks)) or "pgd40")
    _require(spec.restarts == 1 and spec.norm_or(c.norm) == "linf", "attacks",
             f"a preprocessing defense is evaluated with Linf PGD without restarts (pgdN[@S]), not {spec.text!r}"
             f"{' with norm l2' if c.norm != 'linf' else ''}")
    config = target.config
    extra = {k: config[k] for k in ("trained_for",) if k in config}
    if config["method"] == "denoiser":
        extra["denoiser"] = config.get("arch", "unet")
    t1 = time.time()
    partial = _partial_dir(c, target, len(x))
    rows = preprocessing_defense(target.model, classifier, x, y, list(c.eps), steps=spec.steps,
                                 step_size=spec.step_size, batch_size=c.batch_size,
                                 pipeline_attacks=[s.text for s in specs if s.kind.name != "pgd"], seed=c.seed,
                                 resume_dir=partial)
    wall = round(time.time() - t1, 1)
    checks = checklist([r for r in rows if r["threat_model"] != "none"], n=len(x), dataset=config["dataset"])
    checks.append({"check": "scope", "passed": True,
                   "detail": "threat-model checks (monotone, end-to-end <= oblivious, BPDA, attacks on the whole "
                             "pipeline); no FGSM/step/gradient checks; no EOT: the preprocessing is deterministic"})
    print(report_checks(checks, label=target.label))
    sanity = {"passed": all(ch["passed"] for ch in checks), "checks": checks}
    names = {"none": spec.text, "oblivious": f"{spec.text} on the bare classifier, then denoised",
             "end-to-end": f"{spec.text} through denoiser+classifier", "bpda": f"bpda-{spec.text}"}
    records = [record(base, threat_model=r["threat_model"], norm="linf", eps=r["eps"],
                      attack=names[r["threat_model"]] if parse(r["attack"].removeprefix("bpda-")).kind.name == "pgd"
                      else f"{r['attack']} through denoiser+classifier",
                      clean_acc=r["clean_acc"], robust_acc=r["robust_acc"], classifier_run=config["classifier_run"],
                      wall_s=wall, **extra, sanity=sanity) for r in rows]
    for r in records:
        print(f"{r['threat_model']:>10s} {r['attack'].split()[0]:>12s} eps {r['eps']}: clean {r['clean_acc']:.2f}%  "
              f"robust {r['robust_acc']:.2f}%")
    if write:
        print(f"-> {write_result(f'{target.label}_threat_models', records, c.results_dir)}")
    _drop_partial(partial)
    return records


def audit_live(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], eps: float,
               attacks: Sequence[str], autoattack_version: str | None = "fast", aa_n: int = 50,
               square_queries: int = 200, seed: int = 0, dataset: str | None = None, label: str = "") -> dict[str, Any]:
    """A classifier as notebook 05 evaluates it live: the eps sweep with its checklist on every image; at ``eps``,
    AutoAttack (``autoattack_version``; None: not run) and Square on the first ``aa_n`` images, with the strongest
    PGD of ``attacks`` on those same images, for the checks that compare them (ensemble-vs-pgd,
    pgd-vs-ensemble-gap, gradient-free). Returns ``rows`` (for :func:`featlab.viz.plot_robustness`), ``checks``,
    ``measurements`` (typed, each with its n), ``clean`` and ``recorded`` (numbers by name)."""
    from .attacks import autoattack
    from .evaluate import sweep
    from .verdicts import Measurement
    rep = audit(model, x, y, list(eps_list), attacks=tuple(attacks), seed=seed, progress=False, label=label,
                dataset=dataset, warn=False)
    rows, checks = list(rep["rows"]), list(rep["checks"])
    measured = [Measurement(r["attack"], r["robust_acc"], len(x)) for r in rows if r["eps"] == eps]
    recorded: dict[str, Any] = {}
    if autoattack_version:
        xa, ya = x[:aa_n], y[:aa_n]
        aa = autoattack(model, eps=eps, version=autoattack_version, seed=seed)
        acc = robust_accuracy(model, xa, ya, aa, progress=False)
        rows.append({"attack": aa.name, "eps": eps, "norm": "linf",    # autoattack()'s default norm: the checks
                     "robust_acc": acc, "clean_acc": rows[0]["clean_acc"], "n": len(xa)})   # compare it with Square too
        pgd = strongest_pgd(list(attacks)) or list(attacks)[-1]
        pgd_same = sweep(model, xa, ya, [pgd], [eps], seed=seed, progress=False)     # PGD on AutoAttack's images
        # Square reads only the outputs: if it beats PGD on the same images, the gradients mislead PGD
        sq = sweep(model, xa, ya, [f"square{square_queries}"], [eps], seed=seed, progress=False)
        checks += [c for c in checklist(pgd_same + rows[-1:] + sq, n=len(xa), dataset=dataset)
                   if c["id"] in ("ensemble-vs-pgd", "pgd-vs-ensemble-gap", "gradient-free")]
        measured += [Measurement(aa.name, acc, len(xa)), Measurement(sq[0]["attack"], sq[0]["robust_acc"], len(xa)),
                     Measurement(pgd, pgd_same[0]["robust_acc"], len(xa))]     # every attack on the same aa_n images
        rows.append({**{k: v for k, v in sq[0].items() if k != "correct"}, "n": len(xa)})     # n: its Wilson bar
        recorded.update({f"{pgd}_on_aa_images": pgd_same[0]["robust_acc"], "square": sq[0]["robust_acc"]})
    clean = rows[0]["clean_acc"]
    recorded.update({"clean": clean, **{r["attack"]: r["robust_acc"] for r in rows if r["eps"] == eps},
                     "checks_passed": all(c["passed"] for c in checks)})
    return {"rows": rows, "checks": checks, "measurements": measured, "clean": clean, "recorded": recorded}


# --------------------------------------------------------------------------- probes
def separability(target: Target, eps: float, attack_steps: int = 10, n: int = 2048, steps: int = 400, seed: int = 0,
                 results_dir: str = "results", command: str | None = None) -> dict[str, Any]:
    """AFD's post-hoc probe: a fresh discriminator on the frozen encoder's clean vs PGD embeddings."""
    from .defenses import embedding_separability
    seed_everything(seed)
    model, config = target.model, target.config
    _require(not target.is_preprocessing, "run", "separability probes a classifier's encoder, not a denoiser")
    x, y = data.load(config["dataset"], "train", limit=n, seed=seed)
    step = step_size_for(eps, attack_steps)
    t0, commit = time.time(), git_commit()      # the commit at the start, not when the record is written
    rows = {}
    for loss in ("bce", "wgan"):
        seed_everything(seed)
        rows[loss] = embedding_separability(model, x, y, PGD(model, eps=eps, steps=attack_steps, step_size=step),
                                            steps=steps, loss=loss, seed=seed)
        print(f"{target.label} {loss}: train {rows[loss]['train_acc']:.1f}%  held out {rows[loss]['holdout_acc']:.1f}%")
    device = next(model.parameters()).device
    rec = record({"dataset": config["dataset"], "model": config["model"], "method": config["method"],
                  "seed": seed, "command": command, "train_command": config.get("command"), "commit": commit,
                  "device": device_description(device), **target.trained, **({"run": target.run} if target.run else {})},
                 threat_model="white-box", norm="linf", eps=eps, attack=f"pgd{attack_steps}", n_eval=len(x),
                 split="train", clean_acc=rows["bce"]["clean_acc"], robust_acc=rows["bce"]["robust_acc"],
                 wall_s=round(time.time() - t0, 1), probe="embedding_separability", probe_steps=steps,
                 separability=rows)
    print(f"-> {write_result(f'separability_{target.label}', rec, Path(results_dir) / 'probes')}")
    return rec


def probe_runs(run_folders: Sequence[str], eps: Sequence[float], steps: int = 40, n_eval: int = 1000, seed: int = 0,
               name: str = "probe", results_dir: str = "results", command: str | None = None,
               device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Relative feature distortion per tap, adversarial vs random noise, for trained runs (one dataset)."""
    from . import probe
    seed_everything(seed)
    commit = git_commit()                     # at the start: the code that computed these numbers
    loaded = {runs.folder_of(r).name: runs.load(r, device) for r in run_folders}
    datasets = {run.config["dataset"] for run in loaded.values()}
    _require(len(datasets) == 1, "run", f"all runs must share one dataset, got {sorted(datasets)}")
    x, y = data.load(datasets.pop(), "test", limit=n_eval, seed=seed)
    t0 = time.time()
    res = probe.sweep({k: run.model for k, run in loaded.items()}, x, y, list(eps), attack_steps=steps, seed=seed)
    records = []
    for key, run in loaded.items():
        model, config = run.model, run.config
        clean = accuracy(model, x, y)
        base = {"dataset": config["dataset"], "model": config["model"], "method": config["method"],
                "epochs": config["epochs"], "seed": seed, "command": command, "train_command": config["command"],
                "device": device_description(torch.device(device)), "n_eval": len(x), "run": key, "commit": commit}
        for e in eps:
            r = res[key][e]
            adv_acc = robust_accuracy(model, x, y, PGD(model, eps=e, steps=steps), progress=False)
            rec = record(base, threat_model="white-box", norm="linf", eps=e, attack=f"pgd{steps}",
                         clean_acc=clean, robust_acc=adv_acc, wall_s=round(time.time() - t0, 1),
                         relative_l2_distortion={s: {k: round(v, 4) for k, v in d.mean().items()} for s, d in r.items()},
                         relative_l2_std={s: {k: round(v, 4) for k, v in d.std().items()} for s, d in r.items()},
                         amplification_adv_over_sign={k: round(v, 3) for k, v in
                                                      probe.amplification(r["adversarial"], r["random-sign"]).items()})
            records.append(rec)
            print(f"\n{key} eps {e}: clean {clean:.2f}%  PGD-{steps} {adv_acc:.2f}%")
            taps = list(rec["relative_l2_distortion"]["adversarial"])
            print("| set | " + " | ".join(taps) + " |")
            for s_name, row in rec["relative_l2_distortion"].items():
                print(f"| {s_name} | " + " | ".join(f"{row[t]:.3f}" for t in taps) + " |")
    print(f"-> {write_result(name, records, results_dir)}")
    return records


def export(run: str, name: str, classifier: str | None = None, metrics_path: str | None = None) -> Path:
    """Ship a run's weights (float16) as ``featlab.pretrained.load(name)``, with measurements from a JSON file."""
    metrics = None
    if metrics_path:
        try:
            metrics = json.loads(Path(metrics_path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("metrics", f"{metrics_path} is not a readable JSON file ({e})") from None
        _require(isinstance(metrics, dict), "metrics", f"{metrics_path} must hold a JSON object (name -> value)")
    return pretrained.export(run, name, classifier=classifier, metrics=metrics)


def config_from(cls: type, values: dict[str, Any]) -> Any:
    """A config dataclass from a mapping holding (at least) its fields; lists become tuples."""
    kw = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


__all__ = ["ConfigError", "TrainConfig", "EvalConfig", "Target", "train", "resolve", "load_module", "user_model",
           "evaluate", "audit_live",
           "separability", "probe_runs", "config_from", "METHODS", "CONTROLS"]
