"""Command line: ``featlab train`` and ``featlab eval`` (same code paths as the notebooks).

    featlab train --dataset mnist --model mnist_cnn --method pgd_at --epochs 8 --out runs/mnist_pgd_at
    featlab eval --run runs/mnist_pgd_at --attacks pgd40 fgsm --eps 0.3 --n-eval 1000
    featlab eval --pretrained mnist_afd --attacks pgd40 autoattack --eps 0.3   # a shipped model
    featlab probe --run runs/a --run runs/b --eps 0.1 0.2 0.3
    featlab notebooks --out build            # execute every notebook (see featlab.runner)

A run folder holds ``checkpoint.pt`` (resumable), ``config.json`` and ``history.json``; eval
writes one JSON record per attack and eps into ``results/<run>_<attack>_<norm>_eps<eps>[_n<N>].json``
(``_n<N>`` when N is not the default 1,000 test images; ``<run>`` is ``pretrained_<name>`` for a shipped
model, whose record names its weights and the command that trained them).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import data, distributed, models, pretrained, runs
from ._utils import get_device, git_commit, seed_everything
from .attacks import PGD, from_spec, parse, step_size_for, strongest_pgd
from .checklist import checklist, report_checks
from .evaluate import audit, preprocessing_defense
from .metrics import accuracy, robust_accuracy
from .results import device_description, record, result_name, write_result
from .train import AFD, DenoiserObjective, Trainer, create_objective, triangle_schedule_for


# --------------------------------------------------------------------------- flag checks (before any loading)
class UsageError(ValueError):
    """A flag's value is wrong: reported as a usage error (exit status 2)."""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} must be >= {low}")
        return v
    parse.__name__ = f"int >= {low}"
    return parse


def _float_in(low: float, high: float | None = None, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v != v or (v <= low if low_open else v < low) or (high is not None and v > high):
            rng = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} must be {rng}")
        return v
    parse.__name__ = "number"
    return parse


def _attack_spec(text: str) -> str:
    try:                   # the spec parser itself, on a stand-in model: nothing is loaded
        from_spec(text, torch.nn.Linear(1, 10), 0.1)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e).replace("attacks: ", "")) from None
    return text


def _classifier_ref(text: str) -> str:
    """A classifier for a denoiser: a run folder, or ``pretrained:NAME`` (a shipped classifier)."""
    if text.startswith("pretrained:"):
        name = _pretrained_name(text.split(":", 1)[1])
        if pretrained.info(name)["kind"] != "classifier":
            raise argparse.ArgumentTypeError(f"{text} is a denoiser; a shipped classifier is needed: "
                                             f"{pretrained.available('classifier')}")
        return text
    return _run_folder(text)


def _run_folder(text: str) -> str:
    try:
        missing = runs.missing_files(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("run: ", "")) from None
    if missing:
        raise argparse.ArgumentTypeError(f"{text} is not a featlab run folder (no {' or '.join(missing)} in "
                                         f"{runs.folder_of(text)})")
    return text


def _existing_folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder (featlab eval writes its records there)")
    return text


def _pretrained_name(text: str) -> str:
    try:
        pretrained.info(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e).replace("name: ", "")) from None
    return text


_IDENTITY = ("dataset", "model", "method", "seed", "epochs", "objective")


def _check_out_folder(out: Path, config: dict) -> None:
    """--out may resume the same run; a folder holding another run is refused before anything is written."""
    old_path = out / "config.json"
    if not old_path.is_file():
        return
    try:
        old = json.loads(old_path.read_text())
    except ValueError:
        raise UsageError(f"--out: {old_path} is not readable JSON; choose another --out") from None
    diff = {k: (old.get(k), config.get(k)) for k in _IDENTITY if old.get(k) != config.get(k)}
    if diff:
        raise UsageError(f"--out: {out} holds another run (saved vs now: {diff}); choose another --out, or delete "
                         f"the folder to start over")


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


def _denoiser_parts(a: argparse.Namespace, device: torch.device):
    from .defenses import FeatureLoss, create_denoiser
    classifier, ccfg = pretrained.load_classifier(a.classifier_run, device)
    extractor, ecfg = pretrained.load_classifier(a.extractor_run, device) if a.extractor_run else (classifier, ccfg)
    if ecfg["dataset"] != ccfg["dataset"]:
        raise UsageError(f"--extractor-run: a {ecfg['dataset']} model cannot extract features of the classifier's "
                         f"{ccfg['dataset']} images")
    taps = {t: 1.0 for t in a.feature_taps} if a.feature_taps is not None else None
    loss = FeatureLoss(extractor, taps=taps, pixel_weight=a.pixel_weight)
    objective = DenoiserObjective(classifier, loss, eps_range=(a.eps_min, a.eps), pgd_steps=a.attack_steps, seed=a.seed)
    model = create_denoiser(a.denoiser, channels=classifier.input_shape[0], width=a.width, depth=a.depth)
    return model, objective, ccfg


def _classifier_parts(a: argparse.Namespace):
    """The model and objective of a classifier run (every method but the denoiser)."""
    dataset = a.dataset or models.default_dataset(a.model)
    model = models.create(a.model, num_classes=data.info(dataset).num_classes)
    if a.method == "afd":
        objective = AFD(model, eps=a.eps, steps=a.attack_steps, step_size=a.step_size or step_size_for(a.eps, a.attack_steps),
                        attack=a.train_attack, loss=a.afd_loss, lr_ec=a.lr, lr_e=a.lr_e, lr_d=a.lr_d,
                        game=not a.afd_no_game)
        return model, objective, dataset
    kwargs: dict[str, Any] = {
        "standard": lambda: dict(label_smoothing=a.label_smoothing),
        "pgd_at": lambda: dict(eps=a.eps, steps=a.attack_steps, step_size=a.step_size, eps_start=a.eps_start,
                               ramp_epochs=a.ramp_epochs, attack=a.train_attack),
        "trades": lambda: dict(eps=a.eps, steps=a.attack_steps, step_size=a.step_size, beta=a.beta),
    }[a.method]()
    return model, create_objective(a.method, **kwargs), dataset


def _optimizer(a: argparse.Namespace, model: torch.nn.Module, objective: Any) -> torch.optim.Optimizer:
    if a.method == "afd":
        return objective.optimizer_ec          # E + C: SGD as in the AFD code; the schedule applies to it
    if a.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=a.lr)
    return torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay,
                           nesterov=not a.no_nesterov)


def _schedule(a: argparse.Namespace, opt: torch.optim.Optimizer, n_train: int) -> tuple[Any, str, dict[str, Any]]:
    """(scheduler or None, the interval it steps at, what the run's config says about it)."""
    if a.lr_schedule == "triangle":
        sched, warmup = triangle_schedule_for(opt, a.epochs, n_train, a.batch_size, a.warmup_epochs)
        return sched, "step", {"lr_schedule": "triangle", "warmup_epochs": warmup}
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=a.milestones, gamma=0.1) if a.milestones else None
    return sched, "epoch", {"lr_schedule": "step", "milestones": a.milestones}


def cmd_train(a: argparse.Namespace) -> None:
    seed_everything(a.seed)
    if a.method == "afd":
        a.optimizer = "sgd"               # AFD's E+C optimiser is its own SGD (as in the authors' code)
    if a.lr is None:
        a.lr = 0.1 if a.optimizer == "sgd" else 1e-3
    device = distributed.init(a.device)        # under torchrun: joins the process group (gloo / nccl)
    extra: dict[str, Any] = {}
    if a.method == "denoiser":
        model, objective, ccfg = _denoiser_parts(a, device)
        dataset = ccfg["dataset"]
        extra = {"classifier_run": a.classifier_run, "classifier_model": ccfg["model"],
                 "extractor_run": a.extractor_run or a.classifier_run, **model.config()}
    else:
        model, objective, dataset = _classifier_parts(a)
    identity = {"dataset": dataset, "model": a.model if a.method != "denoiser" else f"{a.denoiser}_denoiser",
                "method": a.method, "epochs": a.epochs, "seed": a.seed, "objective": objective.config()}
    _check_out_folder(Path(a.out), json.loads(json.dumps(identity)))     # before any data or file is touched
    x, y = data.load(dataset, "train", limit=a.limit, seed=a.seed)
    xt, yt = data.load(dataset, "test", limit=a.eval_n, seed=a.seed)
    opt = _optimizer(a, model, objective)
    sched, interval, schedule_config = _schedule(a, opt, len(y))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**identity, "optimizer": a.optimizer, "lr": a.lr, **schedule_config,
              **({"nesterov": False} if a.optimizer == "sgd" and a.no_nesterov else {}), "batch_size": a.batch_size, "limit": a.limit,
              "command": a.command, "device": device_description(device),
              "world_size": distributed.world_size(), "sync_batchnorm": a.sync_bn, **extra}
    eval_attack = None
    if a.method != "standard":
        eval_attack = lambda m: PGD(m, eps=a.eps, steps=10)  # noqa: E731
    augment = data.cifar_augment if dataset.startswith("cifar") else None
    t0 = time.time()
    trainer = Trainer(model, objective, epochs=a.epochs, batch_size=a.batch_size, optimizer=opt, scheduler=sched,
                      scheduler_interval=interval,
                      augment=augment, device=device, checkpoint=str(out / "checkpoint.pt"), seed=a.seed,
                      eval_attack=eval_attack, precision=a.precision, memory_format=a.memory_format,
                      sync_batchnorm=a.sync_bn)
    config.update(trainer.fast.describe())        # the precision and memory format this run trains in
    config.update(_commits(out / "config.json"))
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    history = trainer.fit(x, y, eval_data=(xt, yt))
    wall = time.time() - t0
    if distributed.is_main():
        (out / "history.json").write_text(json.dumps({"history": history, "wall_s_this_call": wall}, indent=2) + "\n")
    print(json.dumps(history[-1]))


def cmd_export(a: argparse.Namespace) -> None:
    metrics = None
    if a.metrics:
        try:
            metrics = json.loads(Path(a.metrics).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--metrics: {a.metrics} is not a readable JSON file ({e})") from None
        if not isinstance(metrics, dict):
            raise UsageError(f"--metrics: {a.metrics} must hold a JSON object (name -> value)")
    path = pretrained.export(a.run, a.name, classifier=a.classifier, metrics=metrics)
    print(f"-> {path} ({path.stat().st_size / 1e6:.2f} MB)")


def cmd_results(a: argparse.Namespace) -> None:
    from .results import write_markdown
    print(f"-> {write_markdown(a.results_dir, a.out)}")


@dataclass
class EvalTarget:
    """What ``featlab eval`` (and ``separability``) evaluates: a run folder (``--run``), a shipped model
    (``--pretrained``) or a control (``--control``), with what its records say about it."""

    model: torch.nn.Module
    config: dict[str, Any]            # dataset, model, method, the training command and device, classifier_run
    trained: dict[str, Any]           # epochs, train_wall_s (and the shipped weights' hash)
    label: str                        # names the result files
    classifier_ref: str | None = None  # a denoiser's or control's classifier: run folder or pretrained:NAME
    loaded_classifier: torch.nn.Module | None = None     # already loaded (a control reads its config from it)

    def classifier(self, device: torch.device) -> torch.nn.Module:
        if self.loaded_classifier is None:
            self.loaded_classifier = pretrained.load_classifier(self.classifier_ref, device)[0]
        return self.loaded_classifier


def _eval_target(a: argparse.Namespace, device: torch.device) -> EvalTarget:
    if getattr(a, "control", None) is not None:
        from .defenses import create_control
        clf, ccfg = pretrained.load_classifier(a.classifier_run, device)
        config = {"dataset": ccfg["dataset"], "model": a.control, "method": "control", "command": None,
                  "device": None, "classifier_run": a.classifier_run}
        return EvalTarget(create_control(a.control).to(device), config, {"epochs": 0, "train_wall_s": 0.0},
                          f"control_{a.control}_{_ref_label(a.classifier_run)}", a.classifier_run, clf)
    if a.pretrained is not None:
        entry = pretrained.info(a.pretrained)
        key = pretrained.ALIASES.get(a.pretrained, a.pretrained)
        classifier = f"pretrained:{entry['classifier']}" if entry.get("classifier") else None
        config = {"dataset": entry["dataset"], "model": entry["model"], "method": entry["method"],
                  "command": entry["train_command"], "device": entry["train_device"], "classifier_run": classifier}
        trained = {"epochs": entry["epochs"], "train_wall_s": entry["train_wall_s"],
                   "weights": f"featlab.pretrained:{key} (float16, sha256 {entry['sha256'][:12]})"}
        return EvalTarget(pretrained.load(key, device), config, trained, f"pretrained_{key}", classifier)
    run = runs.load(a.run, device)
    return EvalTarget(run.model, run.config, run.train_summary, run.folder.name, run.config.get("classifier_run"))


def _ref_label(ref: str) -> str:
    return ref.split(":", 1)[1] if ref.startswith("pretrained:") else Path(ref).name


def cmd_eval(a: argparse.Namespace) -> None:
    seed_everything(a.seed)
    device = distributed.init(a.device)        # under torchrun: the images are shared out (featlab.metrics)
    target = _eval_target(a, device)
    config = target.config
    if a.classifier_run and config["method"] not in ("denoiser", "control"):
        raise UsageError("--classifier-run: only for a denoiser (defend another classifier: transfer) or a --control")
    if a.classifier_run and config["method"] == "denoiser" and a.classifier_run != config.get("classifier_run"):
        # transfer: the denoiser in front of a classifier it was not trained for
        target.config = config = {**config, "trained_for": config.get("classifier_run"),
                                  "classifier_run": a.classifier_run}
        target.classifier_ref, target.loaded_classifier = a.classifier_run, None
        target.label = f"{target.label}_on_{_ref_label(a.classifier_run)}"
    x, y = data.load(config["dataset"], "test", limit=a.n_eval, seed=a.seed)
    base = {"dataset": config["dataset"], "model": config["model"], "method": config["method"], "n_eval": len(x),
            "seed": a.seed, "command": a.command, "train_command": config.get("command"),
            "train_device": config.get("device"), "device": device_description(device),
            **({"train_commit": config["commit"]} if config.get("commit") else {}),
            **({"train_resumed_at_commits": config["resumed_at_commits"]} if config.get("resumed_at_commits") else {}),
            "train_precision": config.get("precision", "fp32"),
            "train_memory_format": config.get("memory_format", "contiguous"),
            "precision": "fp32", "world_size": distributed.world_size(), **target.trained}
    if config["method"] in ("denoiser", "control"):
        _eval_preprocessing(a, target, target.classifier(device), x, y, base)
        return
    t0 = time.time()
    large = a.large_eps if a.large_eps is not None else (1.0 if a.norm == "linf" else None)
    large = None if large is not None and large <= 0 else large          # --large-eps 0: no such point
    partial = _partial_dir(a, target, len(x))
    report = audit(target.model, x, y, a.eps, attacks=tuple(a.attacks), norm=a.norm, large_eps=large or 0,
                   batch_size=a.batch_size, seed=a.seed, label=target.label, dataset=target.config["dataset"],
                   resume_dir=partial)
    print(report["text"])
    sanity = {"passed": report["passed"], "checks": report["checks"]}
    for r in report["rows"] + report["worst_case"]:
        if r["attack"] == "worst-case":      # every attack of this call, per image (as AutoAttack counts)
            extra = {"attack_repr": "per-example worst case of " + " + ".join(r["attacks"]), "attacks": r["attacks"]}
        else:
            extra = {"attack_repr": repr(from_spec(r["attack"], target.model, r["eps"], norm=a.norm, seed=a.seed))}
        # "white-box" is the threat model (the attacker may see everything), also for Square, which uses no gradient
        if r.get("resumed_batches"):     # an interrupted call's batches, read back (wall_s counts them)
            extra["resumed_batches"] = r["resumed_batches"]
            print(f"{r['attack']} at eps {r['eps']:g}: {r['resumed_batches']} batch(es) read back from {partial}")
        rec = record(base, threat_model="white-box", norm=r["norm"], eps=r["eps"], attack=r["attack"], **extra,
                     clean_acc=r["clean_acc"], robust_acc=r["robust_acc"], wall_s=r["wall_s"], sanity=sanity)
        if large is not None and r["eps"] == large and large not in a.eps:
            rec["role"] = "checklist large-eps point"       # featlab.results.worst_case leaves it out
        name = result_name(target.label, r["attack"], r["norm"], r["eps"], len(x))
        path = write_result(name, rec, a.results_dir)
        print(f"{name}: clean {r['clean_acc']:.2f}%  robust {r['robust_acc']:.2f}%  -> {path}")
    _drop_partial(partial)
    print(f"eval wall {time.time() - t0:.1f}s")


def _partial_dir(a: argparse.Namespace, target: EvalTarget, n: int) -> Path:
    """Where ``featlab eval`` keeps the finished batches of every attack until its records are written:
    the same command, interrupted (a killed AutoAttack), resumes from there
    (:class:`featlab.metrics.BatchStore`; a batch of other weights or images is refused, never reused).
    One folder per target, images and settings (attacks, eps, norm, batch size), so another command on
    the same model neither reads nor deletes it."""
    settings = json.dumps([a.attacks, a.eps, a.norm, a.batch_size, getattr(a, "large_eps", None)], default=str)
    return (Path(a.results_dir) / ".partial"
            / f"{target.label}_n{n}_seed{a.seed}_{hashlib.sha256(settings.encode()).hexdigest()[:10]}")


def _drop_partial(partial: Path) -> None:
    """The records are written: the finished batches are no longer needed."""
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(partial, ignore_errors=True)
        with contextlib.suppress(OSError):
            partial.parent.rmdir()           # .partial/ itself, once empty


def _eval_preprocessing(a: argparse.Namespace, target: EvalTarget, classifier: torch.nn.Module, x: torch.Tensor,
                        y: torch.Tensor, base: dict[str, Any]) -> None:
    """Every threat model of a preprocessing defense (a denoiser or a control) in front of its classifier:
    the undefended reference, oblivious, end-to-end and BPDA with PGD from ``--attacks pgdN[@S]``; and
    ``--attacks autoattack`` / ``apgd`` / ``square`` run end to end on the whole pipeline."""
    specs = [parse(s) for s in a.attacks]
    if any(s.kind.name == "fgsm" for s in specs):
        raise UsageError("--attacks: a preprocessing defense is evaluated with pgdN, autoattack, apgd and square, "
                         "not fgsm")
    spec = parse(strongest_pgd(a.attacks) or "pgd40")
    if spec.restarts != 1 or spec.norm_or(a.norm) != "linf":
        raise UsageError(f"--attacks: a preprocessing defense is evaluated with Linf PGD without restarts "
                         f"(pgdN[@S]), not {spec.text!r}{' with --norm l2' if a.norm != 'linf' else ''}")
    config = target.config
    extra = {k: config[k] for k in ("trained_for",) if k in config}
    if config["method"] == "denoiser":
        extra["denoiser"] = config.get("arch", "unet")
    t1 = time.time()
    partial = _partial_dir(a, target, len(x))
    rows = preprocessing_defense(target.model, classifier, x, y, a.eps, steps=spec.steps, step_size=spec.step_size, batch_size=a.batch_size,
                                 pipeline_attacks=[s.text for s in specs if s.kind.name != "pgd"], seed=a.seed,
                                 resume_dir=partial)
    wall = round(time.time() - t1, 1)
    checks = checklist([r for r in rows if r["threat_model"] != "none"], n=len(x), dataset=config["dataset"])
    checks.append({"check": "scope", "passed": True,
                   "detail": "threat-model checks (monotone, end-to-end <= oblivious, BPDA, attacks on the whole "
                             "pipeline); no FGSM/step/gradient checks; no EOT: the preprocessing is deterministic"})
    print(report_checks(checks, label=target.label))
    sanity = {"passed": all(c["passed"] for c in checks), "checks": checks}
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
    print(f"-> {write_result(f'{target.label}_threat_models', records, a.results_dir)}")
    _drop_partial(partial)


def cmd_separability(a: argparse.Namespace) -> None:
    """AFD's post-hoc probe: a fresh discriminator on the frozen encoder's clean vs PGD embeddings."""
    from .defenses import embedding_separability
    seed_everything(a.seed)
    device = get_device(a.device)
    target = _eval_target(a, device)
    model, config = target.model, target.config
    if config["method"] == "denoiser":
        raise UsageError("--run/--pretrained: separability probes a classifier's encoder, not a denoiser")
    x, y = data.load(config["dataset"], "train", limit=a.n, seed=a.seed)
    step = step_size_for(a.eps, a.attack_steps)
    t0 = time.time()
    rows = {}
    for loss in ("bce", "wgan"):
        seed_everything(a.seed)
        rows[loss] = embedding_separability(model, x, y, PGD(model, eps=a.eps, steps=a.attack_steps, step_size=step),
                                            steps=a.steps, loss=loss, seed=a.seed)
        print(f"{target.label} {loss}: train {rows[loss]['train_acc']:.1f}%  held out {rows[loss]['holdout_acc']:.1f}%")
    # a results record (featlab.results.RESULT_KEYS) whose numbers are the probe's
    rec = record({"dataset": config["dataset"], "model": config["model"], "method": config["method"],
                  "seed": a.seed, "command": a.command, "train_command": config.get("command"),
                  "device": device_description(device), **target.trained},
                 threat_model="white-box", norm="linf", eps=a.eps, attack=f"pgd{a.attack_steps}", n_eval=len(x),
                 split="train", clean_acc=rows["bce"]["clean_acc"], robust_acc=rows["bce"]["robust_acc"],
                 wall_s=round(time.time() - t0, 1), probe="embedding_separability", probe_steps=a.steps,
                 separability=rows)
    print(f"-> {write_result(f'separability_{target.label}', rec, Path(a.results_dir) / 'probes')}")


def cmd_probe(a: argparse.Namespace) -> None:
    """Relative feature distortion per tap, adversarial vs random noise, for trained runs."""
    from . import probe
    seed_everything(a.seed)
    device = get_device(a.device)
    loaded = {runs.folder_of(r).name: runs.load(r, device) for r in a.run}
    datasets = {run.config["dataset"] for run in loaded.values()}
    if len(datasets) != 1:
        raise UsageError(f"--run: all runs must share one dataset, got {sorted(datasets)}")
    x, y = data.load(datasets.pop(), "test", limit=a.n_eval, seed=a.seed)
    t0 = time.time()
    res = probe.sweep({k: run.model for k, run in loaded.items()}, x, y, a.eps, attack_steps=a.steps, seed=a.seed)
    records = []
    for name, run in loaded.items():
        model, config = run.model, run.config
        clean = accuracy(model, x, y)
        base = {"dataset": config["dataset"], "model": config["model"], "method": config["method"],
                "epochs": config["epochs"], "seed": a.seed, "command": a.command, "train_command": config["command"],
                "device": device_description(device), "n_eval": len(x)}
        for eps in a.eps:
            r = res[name][eps]
            x_adv_acc = robust_accuracy(model, x, y, PGD(model, eps=eps, steps=a.steps),
                                        progress=False)
            rec = record(base, threat_model="white-box", norm="linf", eps=eps, attack=f"pgd{a.steps}",
                         clean_acc=clean, robust_acc=x_adv_acc, wall_s=round(time.time() - t0, 1),
                         relative_l2_distortion={s: {k: round(v, 4) for k, v in d.mean().items()} for s, d in r.items()},
                         relative_l2_std={s: {k: round(v, 4) for k, v in d.std().items()} for s, d in r.items()},
                         amplification_adv_over_sign={k: round(v, 3) for k, v in
                                                      probe.amplification(r["adversarial"], r["random-sign"]).items()})
            records.append(rec)
            print(f"\n{name} eps {eps}: clean {clean:.2f}%  PGD-{a.steps} {x_adv_acc:.2f}%")
            taps = list(rec["relative_l2_distortion"]["adversarial"])
            print("| set | " + " | ".join(taps) + " |")
            for s_name, row in rec["relative_l2_distortion"].items():
                print(f"| {s_name} | " + " | ".join(f"{row[t]:.3f}" for t in taps) + " |")
    print(f"-> {write_result(a.name, records, a.results_dir)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="featlab", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model with one objective; resumable run folder")
    t.add_argument("--dataset", choices=sorted(data.DATASETS), default=None)
    t.add_argument("--model", choices=sorted(models.MODELS), default="mnist_cnn")
    t.add_argument("--method", choices=["standard", "pgd_at", "trades", "afd", "denoiser"], default="standard")
    t.add_argument("--epochs", type=_int_at_least(1), default=1)
    t.add_argument("--batch-size", type=_int_at_least(1), default=128)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--no-nesterov", action="store_true",
                   help="sgd: plain momentum (as AFD's own E+C optimiser), not Nesterov's")
    t.add_argument("--lr", type=_float_in(0.0, low_open=True), default=None,
                   help="learning rate (default: 1e-3 for adam, 0.1 for sgd and for afd's E+C, as in the AFD code)")
    t.add_argument("--weight-decay", type=_float_in(0.0), default=5e-4)
    t.add_argument("--milestones", type=_int_at_least(1), nargs="*", default=[],
                   help="epochs after which the LR drops 10x (the step schedule)")
    t.add_argument("--lr-schedule", choices=["step", "triangle"], default="step",
                   help="step: constant LR with --milestones drops; triangle: per-step one-cycle, linear up over "
                        "--warmup-epochs then linear down to 0 (the fast CIFAR recipes)")
    t.add_argument("--warmup-epochs", type=_float_in(0.0), default=None,
                   help="triangle: epochs of linear warm-up (default: a fifth of --epochs)")
    t.add_argument("--label-smoothing", type=_float_in(0.0, 1.0), default=0.0, help="standard: cross-entropy label smoothing")
    t.add_argument("--eps", type=_float_in(0.0), default=0.3)
    t.add_argument("--attack-steps", type=_int_at_least(1), default=10)
    t.add_argument("--step-size", type=_float_in(0.0, low_open=True), default=None, help="attack step (default 2.5 * eps / steps)")
    t.add_argument("--beta", type=_float_in(0.0), default=6.0, help="trades: weight of the KL term")
    t.add_argument("--afd-loss", choices=["wgan", "bce"], default="wgan", help="afd: discriminator loss")
    t.add_argument("--afd-no-game", action="store_true",
                   help="afd: the mechanism ablation: no encoder update against the discriminator")
    t.add_argument("--train-attack", choices=["pgd", "apgd-ce"], default="pgd",
                   help="afd, pgd_at: the attack that makes x_adv (apgd-ce with --attack-steps 40 is the AFD code's "
                        "MNIST default)")
    t.add_argument("--lr-e", type=_float_in(0.0, low_open=True), default=0.5, help="afd: learning rate of the encoder's adversarial step")
    t.add_argument("--lr-d", type=_float_in(0.0, low_open=True), default=0.5, help="afd: learning rate of the discriminator")
    t.add_argument("--eps-start", type=_float_in(0.0), default=None)
    t.add_argument("--ramp-epochs", type=_int_at_least(0), default=0)
    t.add_argument("--limit", type=_int_at_least(1), default=None, help="train on a stratified subset")
    t.add_argument("--classifier-run", type=_classifier_ref, default=None,
                   help="denoiser: the frozen classifier to defend: a run folder, or pretrained:NAME")
    t.add_argument("--extractor-run", type=_classifier_ref, default=None,
                   help="denoiser: the feature extractor of the loss, a run folder or pretrained:NAME (default: the "
                        "classifier itself)")
    t.add_argument("--denoiser", choices=["residual", "unet", "bottleneck"], default="residual",
                   help="denoiser: architecture (featlab.defenses.DENOISERS; residual won the screen of notebook 02)")
    t.add_argument("--feature-taps", nargs="*", default=None,
                   help="denoiser: taps of the feature loss (default: all spatial taps; none: pixel loss only)")
    t.add_argument("--pixel-weight", type=_float_in(0.0), default=0.0, help="denoiser: weight of the pixel MSE term")
    t.add_argument("--eps-min", type=_float_in(0.0), default=0.05, help="denoiser: low end of the training eps range")
    t.add_argument("--width", type=_int_at_least(1), default=None,
                   help="denoiser: channels at full resolution (default 32 bottleneck, 16 U-Nets)")
    t.add_argument("--depth", type=_int_at_least(1), default=2, help="denoiser: down-sampling levels")
    t.add_argument("--eval-n", type=_int_at_least(1), default=1000)
    t.add_argument("--seed", type=_int_at_least(0), default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (evaluation is always fp32)")
    t.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="auto: channels_last with bf16 and on CUDA")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run folder or a shipped model; writes results/*.json")
    target = e.add_mutually_exclusive_group(required=True)
    target.add_argument("--pretrained", type=_pretrained_name, default=None, metavar="NAME",
                        help="a model shipped with featlab (featlab.pretrained.available(), or an alias)")
    target.add_argument("--run", "--checkpoint", dest="run", type=_run_folder,
                        help="a run folder of featlab train (or its checkpoint.pt); under torchrun write "
                             "--checkpoint (torchrun takes --run for its own --run-path)")
    target.add_argument("--control", choices=["binarize", "bits2", "bits4", "median3"], default=None,
                        help="a preprocessing control (featlab.defenses.CONTROLS) in front of --classifier-run")
    e.add_argument("--classifier-run", type=_classifier_ref, default=None,
                   help="--control: the classifier behind it; a denoiser run: another classifier to defend "
                        "(transfer). A run folder or pretrained:NAME")
    e.add_argument("--attacks", type=_attack_spec, nargs="+", default=["pgd40"])
    e.add_argument("--eps", type=_float_in(0.0), nargs="+", default=[0.3])
    e.add_argument("--norm", choices=["linf", "l2"], default="linf")
    e.add_argument("--n-eval", type=_int_at_least(1), default=1000)
    e.add_argument("--large-eps", type=_float_in(0.0), default=None,
                   help="eps of the checklist's 'reaches ~0' point (default 1.0 in Linf; 0 turns it off)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=500)
    e.add_argument("--seed", type=_int_at_least(0), default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--results-dir", default="results")
    e.set_defaults(func=cmd_eval)
    ex = sub.add_parser("export", help="ship a run's weights (float16) as featlab.pretrained.load(NAME)")
    ex.add_argument("--run", type=_run_folder, required=True)
    ex.add_argument("--name", required=True)
    ex.add_argument("--classifier", default=None, help="denoiser runs: the pretrained name of its classifier")
    ex.add_argument("--metrics", default=None, help="a JSON object of measurements to ship in the manifest entry")
    ex.set_defaults(func=cmd_export)
    rs = sub.add_parser("results", help="render results/RESULTS.md from results/*.json")
    rs.add_argument("--results-dir", type=_existing_folder, default="results")
    rs.add_argument("--out", default=None, help="default: <results-dir>/RESULTS.md")
    rs.set_defaults(func=cmd_results)
    pr = sub.add_parser("probe", help="feature distortion per tap, adversarial vs random noise")
    pr.add_argument("--run", type=_run_folder, action="append", required=True, help="a run folder (repeat for several)")
    pr.add_argument("--eps", type=_float_in(0.0, 1.0), nargs="+", default=[0.1, 0.2, 0.3])
    pr.add_argument("--steps", type=_int_at_least(1), default=40)
    pr.add_argument("--n-eval", type=_int_at_least(1), default=1000)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--name", default="probe")
    pr.add_argument("--results-dir", default="results")
    pr.set_defaults(func=cmd_probe)
    sp = sub.add_parser("separability", help="AFD's probe: can a fresh discriminator tell clean from adversarial "
                                             "embeddings? -> results/probes/")
    st = sp.add_mutually_exclusive_group(required=True)
    st.add_argument("--pretrained", type=_pretrained_name, default=None, metavar="NAME")
    st.add_argument("--run", type=_run_folder, default=None)
    sp.add_argument("--eps", type=_float_in(0.0, 1.0), default=0.3)
    sp.add_argument("--attack-steps", type=_int_at_least(1), default=10)
    sp.add_argument("--n", type=_int_at_least(8), default=2048, help="training images embedded (a quarter held out)")
    sp.add_argument("--steps", type=_int_at_least(1), default=400, help="the probe's SGD steps")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--results-dir", default="results")
    sp.set_defaults(func=cmd_separability)
    # listed for --help; `featlab notebooks ...` is handed to the runner's own parser below
    sub.add_parser("notebooks", help="execute notebooks with papermill -> build/ (featlab notebooks --help)",
                   add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["notebooks"]:          # `featlab notebooks ...`: the papermill runner's own options
        from .runner import main as run_notebooks
        run_notebooks(argv[1:])
        return
    a = p.parse_args(argv)                  # flag values are checked here, before anything loads (exit 2)
    a.command = "featlab " + " ".join(shlex.quote(x) for x in argv)     # what reproduces this call, in records
    _check_flags(p, a)
    if distributed.env_world_size() > 1 and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")      # under torchrun rank 0 speaks (errors still reach stderr)
    finished = False
    try:
        a.func(a)
        finished = True
    except UsageError as err:
        if a.debug:
            raise
        p.error(str(err))
    except (ValueError, TypeError, RuntimeError, OSError, KeyError) as err:
        if a.debug:
            raise
        # one line, naming what was wrong (featlab's errors name their argument); --debug for the traceback
        print(f"featlab {a.cmd}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.shutdown(clean=finished)


def _check_flags(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The checks that involve two flags (usage errors, exit 2)."""
    if a.cmd == "eval" and a.norm == "linf" and any(e > 1 for e in a.eps):
        p.error(f"argument --eps: {max(a.eps):g} is larger than the whole [0, 1] pixel range in linf (<= 1)")
    if a.cmd == "eval" and a.control and not a.classifier_run:
        p.error("argument --classifier-run: required with --control (the classifier the control defends)")
    if a.cmd == "train":
        if a.eps > 1:
            p.error(f"argument --eps: {a.eps:g} must be <= 1 (linf, pixel units)")
        if a.lr_schedule == "triangle" and a.milestones:
            p.error("argument --milestones: is for --lr-schedule step; triangle has no drops")
        if a.warmup_epochs is not None and (a.lr_schedule != "triangle" or a.warmup_epochs > a.epochs):
            p.error(f"argument --warmup-epochs: needs --lr-schedule triangle and at most --epochs {a.epochs}")
        if a.label_smoothing and a.method != "standard":
            p.error(f"argument --label-smoothing: is for --method standard (got {a.method})")
        if a.milestones and max(a.milestones) >= a.epochs:
            p.error(f"argument --milestones: {max(a.milestones)} must be < --epochs {a.epochs}")
        if a.method == "denoiser" and not a.classifier_run:
            p.error("argument --classifier-run: required with --method denoiser (the frozen classifier to defend)")
        if a.train_attack != "pgd" and a.method not in ("afd", "pgd_at"):
            p.error(f"argument --train-attack: {a.train_attack} is for --method afd and pgd_at (trades maximises its "
                    f"own KL loss)")


if __name__ == "__main__":
    main()
