"""Threat models and sweeps: what an evaluation runs.

- :func:`sweep`: every attack of a list of specs at every eps, on the same images (white box);
- :func:`per_example_worst_case`: per image, the worst over the attacks (as AutoAttack counts);
- :func:`large_eps_rows`: the checklist's "reaches ~0" point;
- :func:`preprocessing_defense`: a preprocessing defense (a denoiser, a control) under the oblivious,
  end-to-end and BPDA threat models, and attacks run on the whole pipeline;
- :func:`audit`: a sweep plus the checklist (:mod:`featlab.checklist`).

The numbers come from :mod:`featlab.metrics`; records are written by :mod:`featlab.results`.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._utils import VERSION, check_choice, check_labels, check_model_input, check_number, git_commit
from .attacks import BPDA, PGD, Attack, canonical_norm, from_spec, parse, step_size_for, strongest_pgd
from .checklist import checklist, report_checks
from .metrics import (BatchStore, accuracy, data_fingerprint, input_gradient_stats, predict, robust_accuracy,
                      robust_correct, state_fingerprint)
from .models import Defended


def _stores(resume_dir: str | os.PathLike | None, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            **common: Any) -> Callable[..., BatchStore | None]:
    """``store(name, **what)``: the :class:`~featlab.metrics.BatchStore` of one computation in
    ``resume_dir/name``, keyed by ``what``, ``common``, the weights and the images; None without a
    ``resume_dir``."""
    if resume_dir is None:
        return lambda name, **what: None
    base = {**common, "model": state_fingerprint(model), "data": data_fingerprint(x, y),
            # the code that computed it: a batch from before a fix (or from another device) is not reused
            "featlab": VERSION, "commit": git_commit(), "torch": torch.__version__,
            "device": next((t.device.type for t in model.state_dict().values()), "cpu")}
    return lambda name, **what: BatchStore(Path(resume_dir) / re.sub(r"[^A-Za-z0-9_.@=-]+", "_", name),
                                           {**base, **what})


def _attack_key(attack: Any) -> str:
    """An attack's settings, as its ``repr`` lists them (featlab's and the wrapped torchattacks' reprs are
    deterministic); a plain callable is known by its name only."""
    return repr(attack) if isinstance(attack, Attack) else getattr(attack, "__qualname__", type(attack).__name__)


#: the threat models of :func:`preprocessing_defense`, in the order it runs them
THREAT_MODELS = ("none", "oblivious", "end-to-end", "bpda")


def threat_model_attack(threat_model: str, preprocess: nn.Module, classifier: nn.Module, eps: float, steps: int,
                        step_size: float | None = None) -> Attack:
    """The attack a threat model of :func:`preprocessing_defense` runs at ``eps``: PGD on the bare classifier
    ("none", "oblivious"), PGD through preprocess + classifier ("end-to-end"), or :class:`BPDA` ("bpda", the
    preprocessing treated as the identity on the backward pass). ``step_size`` None: :func:`step_size_for`."""
    check_choice("threat_model", threat_model, THREAT_MODELS)
    a = step_size if step_size is not None else step_size_for(eps, steps)
    if threat_model == "bpda":
        return BPDA(preprocess, classifier, eps=eps, steps=steps, step_size=a)
    target = Defended(preprocess, classifier) if threat_model == "end-to-end" else classifier
    return PGD(target, eps=eps, steps=steps, step_size=a)


def preprocessing_defense(preprocess: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps_list: list[float], steps: int = 40, step_size: float | None = None,
                          batch_size: int = 500, progress: bool = True, pipeline_attacks: Sequence[str] = (),
                          seed: int = 0, resume_dir: str | os.PathLike | None = None,
                          threat_models: Sequence[str] = THREAT_MODELS) -> list[dict[str, Any]]:
    """Accuracy of ``classifier(preprocess(x))`` under the three threat models, per eps (Linf PGD with
    ``steps`` steps of ``step_size``, default ``2.5 * eps / steps``: the spec "pgd<steps>[@<step_size>]").

    - "none": the undefended classifier under PGD (reference);
    - "oblivious": PGD against the bare classifier, then the defense (the attacker ignores it);
    - "end-to-end": PGD through preprocess + classifier (white box; the denoiser is differentiable);
    - "bpda": PGD with the preprocessing treated as identity on the backward pass.

    ``pipeline_attacks``: more attacks run end to end on the whole pipeline, as ``--attacks`` specs
    ("autoattack", "apgd", "apgd-ce", "square", "squareQ": :func:`featlab.attacks.from_spec`), one row each per eps
    with threat model "end-to-end" and that attack. EOT is not needed: every preprocessing here is
    deterministic.

    ``threat_models``: which of :data:`THREAT_MODELS` run (default all four, in that order). Several defenses in
    front of one classifier share its "none" row (the classifier alone), and attacks on the whole pipeline are
    checked against "end-to-end" PGD only (:mod:`featlab.checklist`): a caller leaves out what it already has.

    ``resume_dir``: every attack's finished batches are kept there (:class:`~featlab.metrics.BatchStore`),
    so the same call, interrupted, resumes where it stopped.

    Returns rows {"threat_model", "attack", "eps", "robust_acc", "clean_acc"} (accuracies in percent).
    """
    if isinstance(threat_models, str):
        raise TypeError(f"threat_models: a sequence of threat models, not the string {threat_models!r} "
                        f"(e.g. [{threat_models!r}]); allowed: {', '.join(THREAT_MODELS)}")
    threat_models = tuple(threat_models)
    for tm in threat_models:
        check_choice("threat_models", tm, THREAT_MODELS)
    for spec in pipeline_attacks:
        if parse(spec).kind.name in ("fgsm", "pgd"):
            raise ValueError(f"pipeline_attacks: {spec!r} is what the threat models already run (PGD-{steps}); "
                             f"allowed: autoattack, apgd, apgd-ceN, square, squareQ")
        from_spec(spec, classifier, 0.1, seed=seed)       # an unknown spec fails here, before any attack runs
    defended = Defended(preprocess, classifier)
    store = _stores(resume_dir, defended, x, y, seed=seed, batch_size=batch_size)
    clean_def = accuracy(defended, x, y, batch_size)
    clean_cls = accuracy(classifier, x, y, batch_size)
    pgd_name = f"pgd{steps}" + (f"@{step_size:g}" if step_size is not None else "")   # its spec
    rows = []
    for eps in eps_list:
        check_number("eps", eps, low=0.0, high=1.0)
        for tm in (t for t in THREAT_MODELS if t in threat_models):
            model, clean = (classifier, clean_cls) if tm == "none" else (defended, clean_def)
            attack = threat_model_attack(tm, preprocess, classifier, eps, steps, step_size)
            acc = robust_accuracy(model, x, y, attack, batch_size, progress, seed=seed,
                                  resume=store(f"{tm}_{pgd_name}_eps{eps:g}", threat_model=tm, eps=float(eps),
                                               attack=_attack_key(attack)))
            rows.append({"threat_model": tm, "attack": f"bpda-{pgd_name}" if tm == "bpda" else pgd_name,
                         "eps": eps, "robust_acc": acc, "clean_acc": clean})
        for spec in pipeline_attacks:
            attack = from_spec(spec, defended, eps, seed=seed)
            acc = robust_accuracy(defended, x, y, attack, batch_size, progress, seed=seed,
                                  resume=store(f"pipeline_{spec}_eps{eps:g}", threat_model="end-to-end",
                                               attack=_attack_key(attack), eps=float(eps)))
            rows.append({"threat_model": "end-to-end", "attack": spec, "eps": eps, "robust_acc": acc,
                         "clean_acc": clean_def})
    return rows


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str] | dict[str, Callable],
          eps_list: list[float], norm: str = "linf", batch_size: int = 500, seed: int = 0,
          progress: bool = True, resume_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Robust accuracy of ``model`` for every attack at every eps.

    Args:
        attacks: spec strings (``featlab.attacks.SPECS_HELP``: "fgsm", "pgd40", "pgd40x5",
            "autoattack", ...) or a dict name -> ``factory(model, eps) -> attack``.
        eps_list: radii in pixel units; eps 0 gives the clean accuracy.
        norm: "linf" or "l2" (spec strings ending in "_l2" are L2 whatever this says).
        resume_dir: keep every attack's finished batches there (:class:`~featlab.metrics.BatchStore`):
            the same call, interrupted, resumes where it stopped. The key holds the weights, the images,
            the attack's settings (its ``repr``; a ``factory`` that returns a plain function is known by
            its name and the function's name only), seed, batch size and the code (featlab version,
            commit, torch, device). A row that read batches back has ``resumed_batches``, and its
            ``wall_s`` includes what they cost.
    Returns rows ``{"attack", "eps", "norm", "clean_acc", "robust_acc", "wall_s", "correct"}`` (percent;
    ``correct`` is the per-example bool tensor, same images for every attack: see
    :func:`per_example_worst_case`).
    """
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if not eps_list:
        raise ValueError("eps_list: give at least one eps")
    for eps in eps_list:
        check_number("eps", eps, low=0.0, high=1.0 if norm == "linf" else None)
    factories = ({a: (lambda m, e, _s=a: from_spec(_s, m, e, norm=norm, seed=seed)) for a in attacks}
                 if not isinstance(attacks, dict) else dict(attacks))
    if not isinstance(attacks, dict):       # malformed specs fail now, before any attack runs
        for a in attacks:
            from_spec(a, model, max(eps_list) if norm == "linf" else 1.0, norm=norm, seed=seed)
    clean_ok = predict(model, x, batch_size) == y.cpu()
    clean = 100.0 * clean_ok.float().mean().item()
    store = _stores(resume_dir, model, x, y, seed=seed, batch_size=batch_size)
    rows = []
    for name, factory in factories.items():
        for eps in eps_list:
            t0 = time.time()
            atk = None if eps == 0 else factory(model, eps)
            row_norm = canonical_norm(getattr(atk, "norm", None)) or norm
            resume = None if atk is None else store(f"{name}_{row_norm}_eps{eps:g}", attack=name, eps=float(eps),
                                                    norm=row_norm, settings=_attack_key(atk))
            ok = clean_ok if atk is None else robust_correct(model, x, y, atk, batch_size, progress, seed=seed,
                                                             resume=resume)
            row = {"attack": name, "eps": float(eps), "norm": row_norm, "clean_acc": clean,
                   "robust_acc": 100.0 * ok.float().mean().item(), "wall_s": round(time.time() - t0, 2), "correct": ok}
            if resume is not None and resume.reused:
                row.update(resumed_batches=resume.reused, wall_s=round(row["wall_s"] + resume.reused_wall_s, 2))
            rows.append(row)
    return rows


def per_example_worst_case(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every (eps, norm) that two or more attacks of a :func:`sweep` ran on the same images: the
    share of images that **every** attack left correctly classified, as AutoAttack counts its
    ensemble. It is at most the lowest single attack's accuracy, and lower whenever the attacks fool
    different images. Rows ``{"attack": "worst-case", "attacks": [...], "eps", "norm", "clean_acc",
    "robust_acc", "wall_s", "correct"}``; rows without ``correct`` are left out."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("correct") is not None and r["eps"] > 0 and r.get("attack") != "worst-case":
            groups.setdefault((float(r["eps"]), str(r["norm"])), []).append(r)
    out = []
    for (eps, norm), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        if len({len(r["correct"]) for r in rs}) != 1:
            raise ValueError("rows: the attacks ran on different numbers of images; no per-example worst case")
        ok = torch.stack([r["correct"] for r in rs]).all(0)
        out.append({"attack": "worst-case", "attacks": [r["attack"] for r in rs], "eps": eps, "norm": norm,
                    "clean_acc": rs[0]["clean_acc"], "robust_acc": 100.0 * ok.float().mean().item(),
                    "wall_s": round(sum(r["wall_s"] for r in rs), 2), "correct": ok})
    return out


def large_eps_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str], eps_list: list[float],
                   large_eps: float | None, norm: str = "linf", batch_size: int = 500, seed: int = 0,
                   progress: bool = True, resume_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The checklist's "reaches ~0" point: the strongest PGD of ``attacks`` (most steps x restarts,
    else PGD-100; with the rule's step size, whatever step the spec fixed) at ``large_eps``; [] when ``large_eps`` is None or already in ``eps_list``."""
    if large_eps is None or large_eps in eps_list:
        return []
    check_number("large_eps", large_eps, low=0.0, low_open=True, high=1.0 if norm == "linf" else None)
    strongest = parse(strongest_pgd(attacks) or "pgd100")
    spec = (f"pgd{strongest.steps}" + (f"x{strongest.restarts}" if strongest.restarts > 1 else "")
            + (f"_{strongest.norm}" if strongest.norm else ""))     # the rule's step at large_eps, not a fixed one
    return sweep(model, x, y, [spec], [large_eps], norm=norm, batch_size=batch_size, seed=seed, progress=progress,
                 resume_dir=resume_dir)


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: list[float],
          attacks: tuple[str, ...] = ("fgsm", "pgd10", "pgd40", "pgd40x3"), norm: str = "linf",
          large_eps: float | None = None, batch_size: int = 500, seed: int = 0, progress: bool = True,
          label: str = "", warn: bool = True, dataset: str | None = None,
          resume_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A sweep plus the checklist, run together: ``{"rows", "checks", "passed", "gradient_stats", "text",
    "worst_case"}`` (``worst_case``: :func:`per_example_worst_case` of the rows, per eps).
    ``dataset``: the checklist writes eps in that dataset's unit (8/255 on CIFAR). ``resume_dir``: as
    in :func:`sweep` (an interrupted audit resumes at its first unfinished batch).

    ``large_eps`` (default 1.0 in Linf, the whole pixel box; 0 for none) is added for the strongest PGD
    so the "reaches ~0" check has its point. Failed checks raise a
    :class:`~featlab.attacks.GradientMaskingWarning`.
    """
    if large_eps is None and norm == "linf":
        large_eps = 1.0
    large_eps = large_eps or None
    rows = sweep(model, x, y, list(attacks), eps_list, norm=norm, batch_size=batch_size, seed=seed, progress=progress,
                 resume_dir=resume_dir)
    rows += large_eps_rows(model, x, y, list(attacks), eps_list, large_eps, norm, batch_size, seed, progress,
                           resume_dir=resume_dir)
    stats = input_gradient_stats(model, x, y, batch_size)
    checks = checklist(rows, stats, large_eps=large_eps, n=len(x), dataset=dataset)
    text = report_checks(checks, label=label, warn=warn)
    return {"rows": rows, "checks": checks, "passed": all(c["passed"] for c in checks), "gradient_stats": stats,
            "text": text, "worst_case": per_example_worst_case(rows)}
