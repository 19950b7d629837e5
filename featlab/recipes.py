"""How the notebooks get their models, in one call each: a shipped model or, where this featlab lacks
it, one trained here (:func:`shipped_or_trained`, which says which); the live training of each dataset's
notebook classifier (:func:`train_live`); each dataset's lineup of shipped models (:func:`lineup`); and the fast
CIFAR recipe (:func:`fit_fast_cifar`, what
``featlab train --optimizer sgd --lr 0.4 --lr-schedule triangle --label-smoothing 0.2 --batch-size 500``
runs for the shipped ``cifar_airnet`` models).

    >>> model = featlab.models.create("cifar_airnet")
    >>> history = fit_fast_cifar(model, x_train, y_train, epochs=8, eval_data=(x_test, y_test))
    >>> model, shipped = shipped_or_trained("cifar_airnet_standard", lambda: train_live("cifar10", x, y)[0])
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import data, models, pretrained
from .attacks import step_size_for
from ._utils import check_choice, check_number, seed_everything
from .train import PGDAT, Objective, Standard, Trainer, train_classifier, triangle_schedule_for

LIVE_MODELS = {"mnist": "mnist_cnn", "cifar10": "cifar_airnet"}     # what train_live builds per dataset


#: per dataset: the shipped models the notebooks put side by side (featlab.pretrained names), and the defaults of a
#: model trained here instead, so that no notebook cell branches on the dataset (:func:`lineup`)
LINEUPS: dict[str, dict[str, Any]] = {
    "mnist": dict(standard="mnist_cnn_standard", robust="mnist_cnn_pgd_at", robust_label="PGD-AT",
                  denoiser="mnist_denoiser_feature", denoisers=("mnist_denoiser_feature",),
                  compared=("mnist_resnet_standard", "mnist_resnet_pgd_at", "mnist_resnet_trades", "mnist_resnet_afd"),
                  live_epochs=2, live_at_steps=5, full_epochs=10, full_at_steps=10, feature_tap="conv2",
                  n_images=300, n_curve=200, n_eval=80, aa_n=40, attacks=("fgsm", "pgd10", "pgd20")),
    "cifar10": dict(standard="cifar_airnet_standard", robust="cifar_airnet_fast_at", robust_label="Fast-AT",
                    denoiser="cifar_airnet_denoiser_feature", denoisers=("cifar_airnet_denoiser_feature",),
                    compared=("cifar_airnet_standard", "cifar_airnet_fast_at", "cifar_airnet_afd", "cifar_airnet_pgd_at",
                              "cifar_airnet_l2_afd"),
                    live_epochs=8, live_at_steps=1, full_epochs=18, full_at_steps=1, feature_tap="block1",
                    # fewer test images than MNIST: an attack on cifar_airnet costs about 4x one on mnist_cnn (notebook
                    # 01's probe: 210 s vs 49 s on the same 300 images, one CPU thread); the committed numbers use 1,000
                    n_images=100, n_curve=100, n_eval=60, aa_n=20, attacks=("fgsm", "pgd10"),
                    eval_eps_list=(2 / 255, 8 / 255)),    # 05's sweep: the small and the usual budget
}


def lineup(dataset: str) -> dict[str, Any]:
    """The notebooks' models and live-training defaults for ``dataset`` (:data:`LINEUPS`; a fresh dict):
    ``standard``, ``robust`` (and its ``robust_label``), ``denoiser``: shipped names; ``compared`` and ``denoisers``:
    the shipped classifiers and denoisers notebook 05 evaluates (the feature-loss denoiser: its pixel-loss twin is
    notebook 02's comparison, and 05 stays under its time budget without it); ``live_epochs`` / ``live_at_steps``: a model trained here instead (the
    adversarial one with that many attack steps; one step is Fast-AT); ``full_*``: the GPU schedule;
    ``feature_tap``: the tap whose feature maps notebook 01 shows; the live sizes, in test images: ``n_images``
    (notebook 01's probe), ``n_curve`` (04's success curves), ``n_eval`` and ``aa_n`` (05's sweep, and its
    AutoAttack and Square), and ``attacks``, 05's sweep (CIFAR-10 without PGD-20, which would double its time)."""
    check_choice("dataset", dataset, LINEUPS)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in LINEUPS[dataset].items()}


def fit_fast_cifar(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective | None = None, *,
                   epochs: int = 10, batch_size: int | None = None, lr: float | None = None, momentum: float = 0.9,
                   weight_decay: float = 5e-4, warmup_epochs: float | None = None, label_smoothing: float = 0.2,
                   device: str | torch.device | None = "auto", seed: int = 0,
                   eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                   eval_attack: Callable[[nn.Module], Callable] | None = None,
                   callback: Callable[[int, dict[str, float]], None] | None = None,
                   progress: bool | None = None) -> list[dict[str, Any]]:
    """Train ``model`` (in place; e.g. ``cifar_airnet``) on CIFAR images with the fast CPU recipe; return the
    per-epoch history.

    The recipe (the airbench family's, as ``featlab train`` runs it for the shipped ``cifar_airnet`` models):
    SGD with Nesterov momentum ``momentum`` (0.9), ``lr`` 0.4 and weight decay 5e-4, batches of 500, a
    per-step triangle schedule (:func:`featlab.train.triangle_schedule`: linear up over ``warmup_epochs``,
    default ``epochs / 5``, then down to 0), random crop and flip (:func:`featlab.data.cifar_augment`).

    On a subset the batches shrink so that an epoch still has 20 steps: ``batch_size`` default
    ``min(500, max(32, len(x) // 20))``, and ``lr`` default ``0.4 * sqrt(batch_size / 500)`` (0.2 at
    batch 125). Measured on one CPU core: 2,000 images, 4 epochs (batch 100): 50% on the test set in 20 s.

    Args:
        objective: default ``Standard(label_smoothing=label_smoothing)`` (0.2); any objective plugs in
            (``PGDAT(eps=8/255, steps=1, step_size=10/255)`` is Fast-AT). An objective that owns its
            optimiser (AFD's ``optimizer_ec``) keeps it and its learning rates; the schedule applies to it
            and to the objective's other optimisers, and ``lr``, ``momentum``, ``weight_decay`` are unused.
        eval_data, eval_attack, callback, progress, device, seed: as :class:`featlab.train.Trainer`.

    Shapes: x (N, 3, 32, 32) in [0, 1], y (N,).
    """
    check_number("epochs", epochs, low=1, integer=True)
    if batch_size is None:
        batch_size = min(500, max(32, len(x) // 20))
    check_number("batch_size", batch_size, low=1, integer=True)
    if lr is None:
        lr = 0.4 * math.sqrt(batch_size / 500)
    check_number("lr", lr, low=0.0, low_open=True)
    if warmup_epochs is not None:
        check_number("warmup_epochs", warmup_epochs, low=0.0, high=epochs)
    objective = objective if objective is not None else Standard(label_smoothing=label_smoothing)
    optimizer = getattr(objective, "optimizer_ec", None)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                    nesterov=True)
    scheduler, _ = triangle_schedule_for(optimizer, epochs, len(x), batch_size, warmup_epochs)
    trainer = Trainer(model, objective, epochs=epochs, batch_size=batch_size, optimizer=optimizer, scheduler=scheduler,
                      scheduler_interval="step", augment=data.cifar_augment, device=device, seed=seed,
                      eval_attack=eval_attack, progress=progress)
    return trainer.fit(x, y, eval_data=eval_data, callback=callback)


def train_live(dataset: str, x: torch.Tensor, y: torch.Tensor, method: str = "standard", *, epochs: int = 2,
               eps: float | None = None, steps: int | None = None, device: str | torch.device | None = "auto",
               seed: int = 0, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
               progress: bool | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train the notebooks' classifier of ``dataset`` here; return (model, per-epoch history).

    ``method`` "standard" or "adversarial", at ``eps`` (default the dataset's,
    :func:`featlab.data.threat_defaults`) with ``steps`` attack steps per batch:

    * MNIST: Madry et al.'s CNN (``mnist_cnn``) with Adam (:func:`featlab.train.train_classifier`);
      adversarial: PGD-AT with ``steps`` (default 5), eps ramped from eps/3 to eps over the epochs.
    * CIFAR-10: ``cifar_airnet`` with :func:`fit_fast_cifar`; adversarial: PGD-AT with ``steps`` (default
      1: Fast-AT, Wong et al. 2020, FGSM from a random start with step 1.25 eps; more steps: step 2.5 eps / steps).
    """
    check_choice("dataset", dataset, LIVE_MODELS)
    check_choice("method", method, ("standard", "adversarial"))
    eps = data.threat_defaults(dataset)["eps"] if eps is None else eps
    adversarial = method == "adversarial"
    if dataset == "mnist":
        kwargs: dict[str, Any] = dict(eps=eps, steps=steps or 5, eps_start=eps / 3, ramp_epochs=epochs) if adversarial else {}
        return train_classifier("mnist_cnn", x, y, "pgd_at" if adversarial else "standard", epochs=epochs, device=device,
                                eval_data=eval_data, seed=seed, progress=progress, **kwargs)
    steps = steps or 1
    objective = None
    if adversarial:
        objective = PGDAT(eps=eps, steps=steps, step_size=1.25 * eps if steps == 1 else step_size_for(eps, steps))
    seed_everything(seed)                  # the initial weights come from the seed too
    model = models.create(LIVE_MODELS[dataset], num_classes=data.info(dataset).num_classes)
    history = fit_fast_cifar(model, x, y, objective, epochs=epochs, device=device, seed=seed,
                             eval_data=eval_data, progress=progress)
    return model.eval(), history


def shipped_or_trained(name: str, train: Callable[[], nn.Module], device: str | torch.device = "cpu",
                       use_shipped: bool = True) -> tuple[nn.Module, bool]:
    """The shipped model ``name`` (:mod:`featlab.pretrained`, its training command printed) when
    ``use_shipped`` and this featlab has it; else ``train()``'s model, after a printed line that says why.
    Returns (model, shipped). Never silent: a notebook that wanted the shipped model says it trains instead."""
    if use_shipped and name in pretrained.available():
        print(f"shipped {name}: {pretrained.info(name)['train_command']}")
        return pretrained.load(name, device), True
    if use_shipped:
        print(f"{name} is not shipped with this featlab (featlab.pretrained.available() lacks it): "
              f"training it here instead, on this notebook's subset and budget")
    return train(), False


#: per dataset: notebook 02's denoiser lab, so that no notebook cell branches on the dataset (:func:`denoiser_lab`)
DENOISER_LABS: dict[str, dict[str, Any]] = {
    "mnist": dict(controls=("binarize", "bits4", "median3"), classifier_epochs=2, full_classifier_epochs=3,
                  n_eval=100, n_pipeline=40,       # six defenses x three threat models: 4 minutes on a CPU core
                  demo_train=4000,                 # the live demo: 32 steps of batch 128, about 20 s on a CPU core
                  # the shipped denoisers; they replace the three trained live (a short demo run still trains)
                  shipped={"feature loss": "mnist_denoiser_feature", "pixel loss": "mnist_denoiser_pixel",
                           "separate extractor": "mnist_denoiser_feature_resnet"},
                  other_label="ResNet", other_shipped="mnist_resnet_standard",
                  other_own_denoiser="mnist_resnet_denoiser_feature"),
    # binarising destroys a colour image: no binarize control; the feature- and pixel-loss denoisers are shipped
    # (5 epochs on all 50,000 images), the separate extractor is not (with PRETRAINED it is left out); the other
    # classifier is a second cifar_airnet from the next seed (shipped: 6 epochs on all images); fewer test images
    # than MNIST (as in LINEUPS)
    "cifar10": dict(controls=("bits4", "median3"), classifier_epochs=8, full_classifier_epochs=18, n_eval=50,
                    n_pipeline=20, demo_train=1000,       # 8 steps: a CIFAR-10 step costs ten MNIST ones
                    shipped={"feature loss": "cifar_airnet_denoiser_feature", "pixel loss": "cifar_airnet_denoiser_pixel"},
                    other_label="airnet (seed 1)", other_shipped="cifar_airnet_standard_seed1", other_own_denoiser=None),
}

#: per dataset: notebook 03's AFD lab (:func:`afd_lab`): the architecture of every model, the live budget, AFD's
#: rates, and the shipped models the notebook sets beside the live ones
AFD_LABS: dict[str, dict[str, Any]] = {
    "mnist": dict(arch="mnist_resnet", n_train=7500, epochs=2, batch_size=64, attack_steps=5,
                  n_eval=300, n_plot=200, n_probe=512,
                  afd_lrs={},                                   # the AFD code's MNIST rates (AFD's defaults)
                  step_sizes={40: 0.01},                        # PGD-40 at step 0.01: Madry et al.'s MNIST attack
                  standard="mnist_resnet_standard",
                  shipped={"PGD-AT (shipped)": "mnist_resnet_pgd_at", "TRADES (shipped)": "mnist_resnet_trades",
                           "AFD (shipped)": "mnist_resnet_afd"}),
    # the AFD code's MNIST rates make the cifar_airnet game diverge (chance accuracy): half of them
    # the live budget is what 4 minutes on a 2-core CPU allow: the game's mechanism, not CIFAR-10 accuracy (the
    # shipped models carry the numbers, trained by `featlab train` on all 50,000 images)
    "cifar10": dict(arch="cifar_airnet", n_train=2000, epochs=2, batch_size=50, attack_steps=2,
                    n_eval=100, n_plot=100, n_probe=256,
                    afd_lrs=dict(lr_ec=0.2, lr_e=0.02, lr_d=0.05), step_sizes={},
                    standard="cifar_airnet_standard",
                    shipped={"Fast-AT (shipped)": "cifar_airnet_fast_at", "AFD (shipped)": "cifar_airnet_afd",
                             # the pair on the reference recipe's terms: PGD-5 training attack, 6 epochs, AFD's
                             # rates and a unit-length embedding
                             "AFD, reference recipe (shipped)": "cifar_airnet_l2_afd",
                             "PGD-AT, same attack (shipped)": "cifar_airnet_pgd_at"}),
}


def _lab(labs: dict[str, dict[str, Any]], dataset: str) -> dict[str, Any]:
    check_choice("dataset", dataset, labs)
    return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v)
            for k, v in labs[dataset].items()}


def denoiser_lab(dataset: str) -> dict[str, Any]:
    """Notebook 02's defaults for ``dataset`` (:data:`DENOISER_LABS`, a fresh dict) plus the threat model's
    (:func:`featlab.data.threat_defaults`: ``eps``, ``eps_list``, ``denoiser_eps_range``): ``controls``,
    the preprocessing without learning; ``classifier_epochs`` (``full_classifier_epochs`` on the GPU schedule)
    of a classifier trained here; ``n_eval``, the test images of the threat-model sweep, and ``n_pipeline``, those
    of the whole-pipeline attacks (Square's queries through every defense are slow on a CPU); ``shipped``, label ->
    shipped denoiser (with PRETRAINED they replace the live ones, and a variant not listed is left out); ``other_*``: the
    second classifier (:func:`second_classifier`) and the shipped denoiser trained for it, if any."""
    return {**_lab(DENOISER_LABS, dataset), **data.threat_defaults(dataset)}


def afd_lab(dataset: str) -> dict[str, Any]:
    """Notebook 03's defaults for ``dataset`` (:data:`AFD_LABS`, a fresh dict): ``arch`` of every model,
    the live budget (``n_train``, ``epochs``, ``batch_size``, ``attack_steps``), the test images of its evaluation
    (``n_eval``) and of its embedding and distortion figures (``n_plot``), the probe's training images
    (``n_probe``), ``afd_lrs`` (keyword
    arguments of :class:`featlab.train.AFD`), ``step_sizes`` (attack steps -> a training step size that
    differs from :func:`featlab.attacks.step_size_for`), and the shipped ``standard`` and ``shipped``
    (label -> name) models."""
    return _lab(AFD_LABS, dataset)


def fit(dataset: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective | None = None, *,
        epochs: int, batch_size: int, optimizer: torch.optim.Optimizer | None = None, milestones: Sequence[int] = (),
        device: str | torch.device | None = "auto", seed: int = 0,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        eval_attack: Callable[[nn.Module], Callable] | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None, progress: bool | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place with the notebooks' recipe of ``dataset``; return the per-epoch history.

    * CIFAR-10: :func:`fit_fast_cifar` (SGD, per-step triangle schedule, crop + flip; ``objective`` None
      is its label-smoothed standard training; an objective's own optimisers, as AFD's, are kept and the
      schedule applies to each). ``optimizer`` and ``milestones`` are unused.
    * MNIST: :class:`featlab.train.Trainer` with ``optimizer`` (None: the Trainer's Adam; AFD's
      ``optimizer_ec`` when the objective has one), its rate divided by 10 at each epoch of ``milestones``.
    """
    check_choice("dataset", dataset, LIVE_MODELS)
    if dataset == "cifar10":
        return fit_fast_cifar(model, x, y, objective, epochs=epochs, batch_size=batch_size, device=device, seed=seed,
                              eval_data=eval_data, eval_attack=eval_attack, callback=callback, progress=progress)
    objective = objective if objective is not None else Standard()
    optimizer = optimizer if optimizer is not None else getattr(objective, "optimizer_ec", None)
    scheduler = None
    if milestones:
        if optimizer is None:
            raise ValueError("milestones: a schedule needs the optimizer it steps; pass optimizer= as well")
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), 0.1)
    trainer = Trainer(model, objective, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                      scheduler=scheduler, device=device, seed=seed, eval_attack=eval_attack, progress=progress)
    return trainer.fit(x, y, eval_data=eval_data, callback=callback)


def second_classifier(dataset: str, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                      device: str | torch.device = "cpu", seed: int = 0,
                      use_shipped: bool = True) -> tuple[nn.Module, str, bool]:
    """Notebook 02's other classifier, the one a denoiser is moved in front of: returns (model, label, shipped).

    MNIST: the shipped ``mnist_resnet_standard`` (or, where it is missing or ``use_shipped`` is False, a
    ``mnist_resnet`` trained here for one epoch with Adam at 3e-3). CIFAR-10: the shipped
    ``cifar_airnet_standard_seed1``, a second ``cifar_airnet`` from another seed (or one trained here for ``epochs``
    from seed ``seed + 1``, :func:`train_live`)."""
    lab = denoiser_lab(dataset)
    if dataset == "mnist":
        train = lambda: train_classifier("mnist_resnet", x, y, epochs=1, device=device, seed=seed, lr=3e-3)[0]  # noqa: E731
    else:
        train = lambda: train_live(dataset, x, y, epochs=epochs, device=device, seed=seed + 1)[0]              # noqa: E731
    if lab["other_shipped"] is None:
        return train(), lab["other_label"], False
    model, shipped = shipped_or_trained(lab["other_shipped"], train, device, use_shipped=use_shipped)
    return model, lab["other_label"], shipped


# --------------------------------------------------------------------------- one setup call per notebook
def _eps_list() -> Any:
    from .nbtools import Number, Rule
    return Rule("list", item=Number(0, 1), none=True)


def _fill_01(dataset: str, v: dict[str, Any]) -> dict[str, Any]:
    lab, threat = lineup(dataset), data.threat_defaults(dataset)
    out = {"EPS_LIST": v["EPS_LIST"] or threat["eps_list"], "EPOCHS": v["EPOCHS"] or lab["live_epochs"],
           "AT_STEPS": v["AT_STEPS"] or lab["live_at_steps"], "N_IMAGES": v["N_IMAGES"] or lab["n_images"]}
    out["AT_EPOCHS"] = v["AT_EPOCHS"] or out["EPOCHS"]
    if v["FULL_SCHEDULE"]:
        out.update(TRAIN_LIMIT=None, EPOCHS=lab["full_epochs"], AT_EPOCHS=lab["full_epochs"], AT_STEPS=lab["full_at_steps"])
    return out


def _fill_02(dataset: str, v: dict[str, Any]) -> dict[str, Any]:
    lab = denoiser_lab(dataset)
    eps = v["EPS"] or lab["eps"]
    out = {"EPS": eps, "EPS_LIST": sorted(set(v["EPS_LIST"] or lab["eps_list"]) | {eps}),   # the verdicts' eps is swept
           "TRAIN_EPS": v["TRAIN_EPS"] or lab["denoiser_eps_range"][1],
           "CONTROLS": v["CONTROLS"] if v["CONTROLS"] is not None else lab["controls"],
           "CLASSIFIER_EPOCHS": v["CLASSIFIER_EPOCHS"] or lab["classifier_epochs"], "N_EVAL": v["N_EVAL"] or lab["n_eval"],
           "N_PIPELINE": v["N_PIPELINE"] or lab["n_pipeline"], "DEMO_TRAIN": v["DEMO_TRAIN"] or lab["demo_train"]}
    if v["FULL_SCHEDULE"]:
        out.update(N_TRAIN=None, CLASSIFIER_EPOCHS=lab["full_classifier_epochs"], EPOCHS=8, ATTACK_STEPS=40, N_EVAL=1000,
                   N_PIPELINE=1000, PIPELINE_ATTACKS=["autoattack"])
    return out


def _fill_03(dataset: str, v: dict[str, Any]) -> dict[str, Any]:
    lab = afd_lab(dataset)
    out = {k: v[k] or lab[k.lower()] for k in ("N_TRAIN", "EPOCHS", "BATCH_SIZE", "ATTACK_STEPS", "N_EVAL", "N_PLOT",
                                                "N_PROBE")}
    out["EPS"] = v["EPS"] or data.threat_defaults(dataset)["eps"]
    if v["FULL_SCHEDULE"]:            # the paper's schedule (its lr drops: AFD_FULL_MILESTONES)
        out.update(N_TRAIN=None, EPOCHS=100, ATTACK_STEPS=40, N_EVAL=10000, BATCH_SIZE=128)
    return out


def _fill_04(dataset: str, v: dict[str, Any]) -> dict[str, Any]:
    lab, threat = lineup(dataset), data.threat_defaults(dataset)
    epochs = v["EPOCHS"] or lab["live_epochs"]
    return {"EPOCHS": epochs, "AT_EPOCHS": v["AT_EPOCHS"] or epochs, "AT_STEPS": v["AT_STEPS"] or lab["live_at_steps"],
            "N_CURVE": v["N_CURVE"] or lab["n_curve"], "CURVE_EPS": v["CURVE_EPS"] or threat["curve_eps"],
            # one static figure at the usual eps: the flip section adds the eps where the attack fails, and the
            # robust model's figure the model where it fails; more eps of one model give figures that look alike
            "STATIC_EPS": v["STATIC_EPS"] or [threat["eps"]]}


def _fill_05(dataset: str, v: dict[str, Any]) -> dict[str, Any]:
    lab, threat = lineup(dataset), data.threat_defaults(dataset)
    eps = v["EPS"] or threat["eps"]
    out = {"N_EVAL": v["N_EVAL"] or lab["n_eval"], "AA_N": v["AA_N"] or lab["aa_n"],
           "ATTACKS": list(v["ATTACKS"] or lab["attacks"]), "EPS": eps,
           "EPS_LIST": sorted(set(v["EPS_LIST"] or lab.get("eval_eps_list") or threat["eps_list"]) | {eps})}  # + the verdicts' eps
    if v["FULL_SCHEDULE"]:
        out.update(N_EVAL=1000, AA_N=1000, AUTOATTACK="standard", SQUARE_QUERIES=5000, ATTACKS=out["ATTACKS"] + ["pgd40x5"])
    return out


#: notebook 03's learning-rate drops on the GPU schedule (the paper's, at epochs 50 and 80 of 100)
AFD_FULL_MILESTONES = (50, 80)


def _rules(notebook: str) -> dict[str, Any]:
    """Each notebook's parameters and what each may be (featlab.nbtools rules)."""
    from . import defenses
    from .nbtools import BOOL, STR, Int, Number, OneOf, Rule
    common = dict(DATASET=OneOf(*LIVE_MODELS), DEVICE=STR, SEED=Int(0))
    eps_list, opt_int = _eps_list(), (lambda low, high=None: Int(low, high, none=True))
    return {
        "01_feature_noise": dict(PRETRAINED=BOOL, EPS_LIST=eps_list, N_IMAGES=opt_int(10), TRAIN_LIMIT=opt_int(100),
                                 EPOCHS=opt_int(1), AT_EPOCHS=opt_int(1), AT_STEPS=opt_int(1), ATTACK_STEPS=Int(1),
                                 FULL_SCHEDULE=BOOL),
        "02_feature_loss_denoiser": dict(
            PRETRAINED=BOOL, DEMO_TRAIN=opt_int(10), N_TRAIN=opt_int(100), CLASSIFIER_EPOCHS=opt_int(1), EPOCHS=Int(1),
            EPS=Number(0, 1, none=True), TRAIN_EPS=Number(0, 1, none=True), EPS_LIST=eps_list, N_EVAL=opt_int(10),
            ATTACK_STEPS=Int(1), PIPELINE_ATTACKS=Rule("list", item=STR), N_PIPELINE=opt_int(1),
            ARCH=OneOf(*defenses.DENOISERS), WIDTH=Int(1), CONTROLS=Rule("list", item=OneOf(*defenses.CONTROLS), none=True),
            FULL_SCHEDULE=BOOL),
        "03_afd": dict(PRETRAINED=BOOL, N_TRAIN=opt_int(100), EPOCHS=opt_int(1), BATCH_SIZE=opt_int(2),
                       EPS=Number(0, 1, none=True), ATTACK_STEPS=opt_int(1), N_EVAL=opt_int(10), EVAL_STEPS=Int(1),
                       N_PLOT=opt_int(10), N_PROBE=opt_int(16), PROBE_STEPS=Int(1), FULL_SCHEDULE=BOOL),
        "04_attack_explorer": dict(PRETRAINED=BOOL, TRAIN_LIMIT=opt_int(100), EPOCHS=opt_int(1), AT_EPOCHS=opt_int(1),
                                   AT_STEPS=opt_int(1), DENOISER_EPOCHS=Int(0), N_CURVE=opt_int(10), CURVE_EPS=eps_list,
                                   STATIC_EPS=eps_list, IMAGE=Int(0, 99), ATTRIBUTION_IMAGE=Int(0, 99),
                                   N_ATTRIBUTION=Int(2, 100)),
        "05_honest_evaluation": dict(RESULTS_DIR=Rule("str", none=True), N_EVAL=opt_int(10), EPS=Number(0, 1, none=True),
                                     EPS_LIST=eps_list, ATTACKS=Rule("list", item=STR, none=True),
                                     AUTOATTACK=OneOf("standard", "fast", none=True), AA_N=opt_int(1),
                                     SQUARE_QUERIES=Int(1), CLASSIFIERS=Rule("list", item=STR, none=True),
                                     DENOISERS=Rule("list", item=STR, none=True), USER_MODEL=Rule("str", none=True),
                                     USER_WEIGHTS=Rule("str", none=True), USER_NORMALIZE=Rule("list", none=True),
                                     FULL_SCHEDULE=BOOL),
    }[notebook] | common


#: each notebook's setup: its parameters' defaults for the dataset (a None filled in) and the GPU schedule's values
NOTEBOOK_FILLS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "01_feature_noise": _fill_01, "02_feature_loss_denoiser": _fill_02, "03_afd": _fill_03,
    "04_attack_explorer": _fill_04, "05_honest_evaluation": _fill_05}


def setup(values: dict[str, Any], notebook: str) -> torch.device:
    """A notebook's one setup call, right after its parameters cell: check every parameter (one
    :class:`featlab.nbtools.ParameterError` names each wrong one and what it may be), fill each None that has a
    default for the notebook's ``DATASET`` and, with ``FULL_SCHEDULE`` (where it has one), set the GPU schedule's values (both from
    this module: no notebook cell branches on the dataset), print what it filled, seed everything from ``SEED``,
    record the dataset (and ``PRETRAINED``), and return the device ``DEVICE`` names. ``values`` is the notebook's
    ``globals()``: the filled values are written back into it.

        >>> device = recipes.setup(globals(), "01_feature_noise")
    """
    from .nbtools import check_parameters, record
    from ._utils import get_device
    check_choice("notebook", notebook, NOTEBOOK_FILLS)
    check_parameters(values, **_rules(notebook))
    filled = NOTEBOOK_FILLS[notebook](values["DATASET"], dict(values))
    changed = {k: v for k, v in filled.items() if values.get(k) != v}
    values.update(filled)
    seed_everything(values["SEED"])
    device = get_device(values["DEVICE"])
    record("dataset", values["DATASET"])
    if "PRETRAINED" in values:
        record("pretrained", values["PRETRAINED"])
    eps = lambda e: data.format_eps(e, values["DATASET"])          # 0.3 on MNIST, 8/255 on CIFAR-10
    show = lambda k, v: (f"[{', '.join(map(eps, v))}]" if "EPS" in k and isinstance(v, list) else
                         eps(v) if "EPS" in k and isinstance(v, float) else repr(v))
    print(f"{values['DATASET']}" + (", GPU schedule" if values.get("FULL_SCHEDULE") else "") + f", on {device}; set from "
          f"featlab.recipes: " + (", ".join(f"{k} = {show(k, v)}" for k, v in changed.items()) or "nothing (every value given)")
          + ("; the training budgets here are for what trains in this notebook, each shipped model prints its own "
             "training command" if values.get("PRETRAINED") else ""))
    return device
