"""Accuracy, robust accuracy and result records (``results/<run>.json``)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._utils import (GradientMaskingWarning, check_labels, check_model_input, check_number, eval_mode, get_device,
                     inputs_checked)
from .attacks.base import Attack, model_device

RESULT_KEYS = ("dataset", "model", "method", "threat_model", "norm", "eps", "attack", "n_eval", "clean_acc",
               "robust_acc", "epochs", "seed", "command", "commit", "device", "wall_s", "date")


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, desc: str, progress: bool):
    check_number("batch_size", batch_size, low=1, integer=True)
    n = len(x)
    for i in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress):
        yield x[i:i + batch_size], y[i:i + batch_size]


def fp32(device: torch.device | str):
    """A context that turns off any autocast around it: featlab measures accuracy in fp32, so that a
    robustness number does not depend on the precision a caller happens to train in."""
    return torch.autocast(torch.device(device).type, enabled=False)


def _batch_count(n: int, batch_size: int) -> int:
    check_number("batch_size", batch_size, low=1, integer=True)
    return (n + batch_size - 1) // batch_size


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """Predicted labels (N,) for images x (N, C, H, W) in [0, 1]; model left in its mode.

    Under torchrun (:mod:`featlab.distributed`) the batches are shared out and gathered: call it on
    every rank; each gets all N labels."""
    check_model_input(model, x)
    device = model_device(model)
    n_batches = _batch_count(len(x), batch_size)
    local = {}
    with eval_mode(model), fp32(device), inputs_checked():        # every submodule's mode restored after
        for b in tqdm(distributed.my_batches(n_batches), desc="predict", leave=False,
                      disable=not (progress and distributed.is_main())):
            local[b] = model(x[b * batch_size:(b + 1) * batch_size].to(device)).argmax(1).cpu()
    return torch.cat(distributed.gather_batches(local, n_batches)) if n_batches else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             progress: bool = False) -> float:
    """Clean accuracy in percent."""
    check_labels(y, len(x), getattr(model, "num_classes", None))
    return 100.0 * (predict(model, x, batch_size, progress) == y.cpu()).float().mean().item()


def _norm_name(norm: Any) -> str | None:
    n = str(norm).lower() if norm is not None else None
    return {"linf": "linf", "l2": "l2", "inf": "linf"}.get(n) if n else None


def check_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: Any = "linf",
                       name: str = "attack", tol: float = 1e-5) -> None:
    """Raise if ``x_adv`` leaves the threat model: other shape, outside [0, 1], NaN, or farther than
    ``eps`` from ``x`` in ``norm`` (Linf or L2; ``eps`` None checks only the box). A robust accuracy
    measured on such images would be wrong, so nothing is clipped here: the attack is at fault."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{name}: returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise RuntimeError(f"{name}: returned NaN or infinite pixels")
    if x_adv.min().item() < -tol or x_adv.max().item() > 1 + tol:
        raise RuntimeError(f"{name}: returned pixels outside [0, 1] "
                           f"(min {x_adv.min().item():.6f}, max {x_adv.max().item():.6f})")
    n = _norm_name(norm)
    if eps is None or n is None:
        return
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if n == "linf" else d.norm(dim=1)
    if len(dist) and dist.max().item() > eps + tol:
        raise RuntimeError(f"{name}: a perturbation of {n} size {dist.max().item():.6f} exceeds eps {eps:g}; "
                           f"its robust accuracy would count images outside the threat model")


def _same_forward(attack_model: nn.Module, model: nn.Module) -> bool:
    """Whether the attack's model computes the same outputs as the evaluated model (then the
    attack's own "fooled" is the evaluation's, and it may stop early)."""
    if attack_model is model:
        return True
    same = getattr(attack_model, "same_forward_as", None)
    return bool(same(model)) if callable(same) else False


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    batch_size: int = 500, progress: bool = True, early_exit: bool = True, seed: int = 0) -> float:
    """Accuracy in percent on ``attack(x, y)``: the mean of :func:`robust_correct`."""
    ok = robust_correct(model, x, y, attack, batch_size, progress, early_exit, seed)
    return 100.0 * ok.float().mean().item()


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   batch_size: int = 500, progress: bool = True, early_exit: bool = True,
                   seed: int = 0) -> torch.Tensor:
    """Per example (N,) bool: correct both clean and on ``attack(x, y)``, attacking batch by batch in
    fp32 (any autocast around the call is switched off: see :func:`fp32`).

    An example counts as robust when the model classifies it correctly both clean and after the
    attack (as AutoAttack counts). ``attack`` is any callable ``(x, y) -> x_adv``: a featlab attack or
    a torchattacks one. A featlab attack on this very model that supports it (PGD, BPDA) runs through
    :meth:`~featlab.attacks.Attack.run_for_accuracy`: examples misclassified clean are not attacked,
    each example keeps its first fooling iterate, and with ``early_exit`` (default) an example stops
    costing gradients once fooled; ``early_exit=False`` computes every step for every example and
    gives the same number (tests/test_speed.py). Every result is checked against the attack's own
    ``eps`` and ``norm`` (when it has them) and the [0, 1] box (:func:`check_threat_model`), so a
    third-party attack cannot inflate the success rate.

    Batch ``b`` runs with torch's RNG seeded by ``distributed.batch_seed(seed, b)`` (the caller's RNG
    is restored afterwards), so random starts do not depend on what ran before. Under torchrun the
    batches are dealt round-robin to the ranks and the result gathered: the same tensor, exactly,
    as one process computes (tests/test_distributed.py). Call it on every rank.
    """
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    check_number("seed", seed, low=0, integer=True)
    device = model_device(model)
    name = getattr(attack, "name", type(attack).__name__)
    tracked = (isinstance(attack, Attack) and attack.supports_early_exit
               and _same_forward(attack.model, model))
    n_batches = _batch_count(len(x), batch_size)
    local: dict[int, torch.Tensor] = {}
    for b in tqdm(distributed.my_batches(n_batches), desc=f"robust acc ({name})", leave=False,
                  disable=not (progress and distributed.is_main())):
        xb = x[b * batch_size:(b + 1) * batch_size].to(device)
        yb = y[b * batch_size:(b + 1) * batch_size].to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), fp32(device), \
                inputs_checked():
            torch.manual_seed(distributed.batch_seed(seed, b))
            with eval_mode(model), torch.no_grad():
                clean_ok = model(xb).argmax(1) == yb
            if tracked:
                x_adv = attack.run_for_accuracy(xb, yb, active=clean_ok, early_exit=early_exit)
            else:
                x_adv = attack(xb, yb)
            eps = getattr(attack, "eps", None)
            check_threat_model(xb, x_adv, float(eps) if isinstance(eps, (int, float)) else None,
                               getattr(attack, "norm", None), name)
            with eval_mode(model), torch.no_grad():
                local[b] = (clean_ok & (model(x_adv).argmax(1) == yb)).cpu()
    parts = distributed.gather_batches(local, n_batches)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


# --------------------------------------------------------------------------- result records
def git_commit(short: bool = False, cwd: str | Path | None = None) -> str:
    """The commit of the featlab checkout (or of ``cwd``), "+dirty" if tracked files changed; "unknown" if none."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, cwd=cwd)
        commit = out.stdout.strip() if out.returncode == 0 else ""   # no repository, or no commit yet
        commit = commit or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd).stdout.strip()
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description(device: torch.device | str | None = None) -> str:
    dev = get_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_result(name: str, record: dict[str, Any] | list[dict[str, Any]],
                 results_dir: str | os.PathLike = "results") -> Path:
    """Write ``results/<name>.json``: one record (or a list), each completed with commit, date,
    command and versions where missing.

    Every key of ``RESULT_KEYS`` must be present in every record (accuracies in percent) or a
    ValueError names the missing ones.
    """
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchattacks
        versions["torchattacks"] = torchattacks.__version__
    except ImportError:
        pass
    defaults = {"commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "versions": versions}
    records = [record] if isinstance(record, dict) else list(record)
    path = Path(results_dir) / f"{name}.json"
    if not distributed.is_main():          # under torchrun, rank 0 alone writes (the records are the same)
        return path
    out = []
    for rec in records:
        rec = {**defaults, **rec}
        missing = [k for k in RESULT_KEYS if k not in rec]
        if missing:
            raise ValueError(f"record is missing required key(s) {missing}; required: {list(RESULT_KEYS)}")
        out.append(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out[0] if isinstance(record, dict) else out, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def preprocessing_defense(preprocess: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps_list: list[float], steps: int = 40, step_size: float | None = None,
                          batch_size: int = 500, progress: bool = True, pipeline_attacks: Sequence[str] = (),
                          seed: int = 0) -> list[dict[str, Any]]:
    """Accuracy of ``classifier(preprocess(x))`` under the three threat models, per eps (Linf PGD).

    - "none": the undefended classifier under PGD (reference);
    - "oblivious": PGD against the bare classifier, then the defense (the attacker ignores it);
    - "end-to-end": PGD through preprocess + classifier (white box; the denoiser is differentiable);
    - "bpda": PGD with the preprocessing treated as identity on the backward pass.

    ``pipeline_attacks``: more attacks run end to end on the whole pipeline, as ``--attacks`` specs
    ("autoattack", "apgd", "square", "squareQ": :func:`featlab.attacks.from_spec`), one row each per eps
    with threat model "end-to-end" and that attack. EOT is not needed: every preprocessing here is
    deterministic.

    Returns rows {"threat_model", "attack", "eps", "robust_acc", "clean_acc"} (accuracies in percent).
    """
    from .attacks import BPDA, PGD, from_spec, parse_pgd_spec
    from .defenses.denoiser import Defended
    for spec in pipeline_attacks:
        if spec == "fgsm" or parse_pgd_spec(spec):
            raise ValueError(f"pipeline_attacks: {spec!r} is what the threat models already run (PGD-{steps}); "
                             f"allowed: autoattack, apgd, square, squareQ")
        from_spec(spec, classifier, 0.1, seed=seed)       # an unknown spec fails here, before any attack runs
    defended = Defended(preprocess, classifier)
    clean_def = accuracy(defended, x, y, batch_size)
    clean_cls = accuracy(classifier, x, y, batch_size)
    rows = []
    for eps in eps_list:
        check_number("eps", eps, low=0.0, high=1.0)
        a = step_size if step_size is not None else 2.5 * eps / steps
        pgd = lambda m: PGD(m, eps=eps, steps=steps, step_size=a)  # noqa: E731
        runs = {"none": (classifier, pgd(classifier), clean_cls),
                "oblivious": (defended, pgd(classifier), clean_def),
                "end-to-end": (defended, pgd(defended), clean_def),
                "bpda": (defended, BPDA(preprocess, classifier, eps=eps, steps=steps, step_size=a), clean_def)}
        for tm, (model, attack, clean) in runs.items():
            acc = robust_accuracy(model, x, y, attack, batch_size, progress)
            rows.append({"threat_model": tm, "attack": f"bpda-pgd{steps}" if tm == "bpda" else f"pgd{steps}",
                         "eps": eps, "robust_acc": acc, "clean_acc": clean})
        for spec in pipeline_attacks:
            acc = robust_accuracy(defended, x, y, from_spec(spec, defended, eps, seed=seed), batch_size, progress,
                                  seed=seed)
            rows.append({"threat_model": "end-to-end", "attack": spec, "eps": eps, "robust_acc": acc,
                         "clean_acc": clean_def})
    return rows


def _row_key(r: dict[str, Any]) -> str:
    """A checklist row's name: its attack, or for a preprocessing defense its threat model (PGD), and
    "end-to-end <attack>" for another attack run on the whole pipeline."""
    if "threat_model" not in r:
        return str(r.get("attack"))
    attack = str(r.get("attack") or "")
    if r["threat_model"] == "end-to-end" and attack and not attack.startswith("pgd"):
        return f"end-to-end {attack.split()[0]}"
    return str(r["threat_model"])


# --------------------------------------------------------------------------- sweeps and the checklist
def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str] | dict[str, Callable],
          eps_list: list[float], norm: str = "linf", batch_size: int = 500, seed: int = 0,
          progress: bool = True) -> list[dict[str, Any]]:
    """Robust accuracy of ``model`` for every attack at every eps.

    Args:
        attacks: spec strings (``featlab.attacks.SPECS_HELP``: "fgsm", "pgd40", "pgd40x5",
            "autoattack", ...) or a dict name -> ``factory(model, eps) -> attack``.
        eps_list: radii in pixel units; eps 0 gives the clean accuracy.
        norm: "linf" or "l2" (spec strings ending in "_l2" are L2 whatever this says).
    Returns rows ``{"attack", "eps", "norm", "clean_acc", "robust_acc", "wall_s", "correct"}`` (percent;
    ``correct`` is the per-example bool tensor, same images for every attack: see
    :func:`per_example_worst_case`).
    """
    import time
    from .attacks import from_spec
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
    rows = []
    for name, factory in factories.items():
        for eps in eps_list:
            t0 = time.time()
            atk = None if eps == 0 else factory(model, eps)
            ok = clean_ok if atk is None else robust_correct(model, x, y, atk, batch_size, progress, seed=seed)
            rows.append({"attack": name, "eps": float(eps), "norm": _norm_name(getattr(atk, "norm", None)) or norm,
                         "clean_acc": clean, "robust_acc": 100.0 * ok.float().mean().item(),
                         "wall_s": round(time.time() - t0, 2), "correct": ok})
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


def input_gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Share of examples whose cross-entropy input gradient is all zero or not finite, and the median norm."""
    check_model_input(model, x)
    check_labels(y, len(x), getattr(model, "num_classes", None))
    device = model_device(model)
    dead, norms = 0, []
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, "input gradients", False):
            xb = xb.to(device).clone().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xb), yb.to(device), reduction="sum")
            g = torch.autograd.grad(loss, xb, allow_unused=True)[0] if loss.requires_grad else None
            g = (torch.zeros_like(xb) if g is None else g).flatten(1)
            bad = ~torch.isfinite(g).all(1) | (g.abs().amax(1) == 0)
            dead += int(bad.sum())
            norms.append(torch.nan_to_num(g.norm(dim=1), nan=0.0).cpu())
    return {"dead_fraction": 100.0 * dead / len(x), "median_grad_norm": float(torch.cat(norms).median())}


def checklist(rows: list[dict[str, Any]], gradient_stats: dict[str, float] | None = None,
              large_eps: float | None = None, tol: float = 1.0, zero_tol: float = 5.0,
              dead_tol: float = 50.0, n: int | None = None) -> list[dict[str, Any]]:
    """Sanity checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness", arXiv 1902.06705).

    Works on rows of :func:`sweep` (``attack``, ``eps``, ``robust_acc``) and, for preprocessing
    defenses, rows of :func:`preprocessing_defense` (``threat_model``). A check that the rows
    cannot decide is left out. Each check: ``{"check", "passed", "detail"}``.

    1. monotone: per attack, accuracy does not rise (by more than ``tol`` points) as eps grows;
    2. reaches zero: at ``large_eps`` (e.g. 1.0 in Linf: any image) the strongest attack leaves
       at most ``zero_tol`` percent;
    3. iterative >= one-step: every Linf PGD/AutoAttack is at least as strong as FGSM at the same eps;
    4. more effort does not help the model: PGD with more steps x restarts is not weaker;
    5. AutoAttack <= PGD (same eps);
    6. end-to-end <= oblivious for preprocessing defenses (same eps);
    7. gradients exist: at most ``dead_tol`` percent of examples have an all-zero or non-finite
       input gradient (``gradient_stats`` from :func:`input_gradient_stats`);
    8. gradient-free attacks are not stronger: Square (random search on the outputs only) leaves
       no lower accuracy than the best gradient attack (FGSM, PGD, APGD) at the same eps and norm.
       If it does, the gradients mislead the white-box attacks, which is gradient masking.
    9. for preprocessing defenses, end-to-end PGD is at least as strong as BPDA (same eps): the exact
       gradient through a differentiable preprocessing should not do worse than pretending it is the
       identity. If it does, the preprocessing's gradient is useless or misleading (binarisation,
       rounding, a median filter), which is gradient masking: report BPDA.
    10. for preprocessing defenses with attacks on the whole pipeline (``pipeline_attacks`` of
        :func:`preprocessing_defense`): AutoAttack / APGD through it is at least as strong as
        end-to-end PGD, and Square through it is not stronger than the gradient attacks through it.

    Comparisons allow ``tol`` points of slack, at least one image's worth (100 / ``n``) when the
    number of evaluated images ``n`` is given, so a single flipped image is not a failure.
    """
    from .attacks import parse_pgd_spec
    if n:
        tol = max(tol, 100.0 / n)
    checks: list[dict[str, Any]] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    by_attack: dict[str, dict[float, float]] = {}
    norm_of: dict[str, str | None] = {}     # an attack's norm: its rows' "norm", else its spec's tail
    for r in rows:
        key = _row_key(r)
        by_attack.setdefault(key, {})[float(r["eps"])] = float(r["robust_acc"])
        if float(r["eps"]) > 0 and key not in norm_of:
            tail = "l2" if key.endswith("_l2") else "linf" if key.endswith("_linf") else None
            norm_of[key] = _norm_name(r.get("norm")) or tail
    for name, curve in sorted(by_attack.items()):
        eps_sorted = sorted(curve)
        if len(eps_sorted) >= 2:
            rises = [(a, b) for a, b in zip(eps_sorted, eps_sorted[1:]) if curve[b] > curve[a] + tol]
            add(f"monotone in eps ({name})", not rises,
                "ok" if not rises else "; ".join(f"{curve[a]:.1f}% at eps {a:g} -> {curve[b]:.1f}% at eps {b:g}"
                                                 for a, b in rises))
    if large_eps is not None:
        at = {n: c[large_eps] for n, c in by_attack.items() if large_eps in c and n not in ("none", "oblivious")}
        if at:
            best = min(at, key=at.get)
            add(f"reaches ~0 at eps {large_eps:g}", at[best] <= zero_tol,
                f"strongest attack {best}: {at[best]:.1f}% (must be <= {zero_tol:g}%)")
    steps_of = {}
    for name in by_attack:
        pgd = parse_pgd_spec(name) if name.startswith("pgd") else None
        if pgd:
            steps_of[name] = pgd[0] * pgd[1]
    # FGSM is Linf: compare it with the iterative attacks in Linf (not a pgdN_l2 spec)
    iterative = [n for n in by_attack if (n in steps_of or n.startswith(("autoattack", "apgd"))) and not n.endswith("_l2")]
    if "fgsm" in by_attack:
        bad = [(n, e) for n in iterative for e, acc in by_attack[n].items()
               if e in by_attack["fgsm"] and e > 0 and acc > by_attack["fgsm"][e] + tol]
        if iterative:
            add("iterative attacks at least as strong as FGSM", not bad,
                "ok" if not bad else "; ".join(f"{n} {by_attack[n][e]:.1f}% > fgsm {by_attack['fgsm'][e]:.1f}% "
                                               f"at eps {e:g}" for n, e in bad))
    for norm_tail in ("", "_l2"):
        group = sorted((n for n in steps_of if n.endswith(norm_tail) and (norm_tail or not n.endswith("_l2"))),
                       key=steps_of.get)
        bad = []
        for weak, strong in zip(group, group[1:]):
            for e, acc in by_attack[strong].items():
                if e in by_attack[weak] and acc > by_attack[weak][e] + tol:
                    bad.append(f"{strong} {acc:.1f}% > {weak} {by_attack[weak][e]:.1f}% at eps {e:g}")
        if len(group) >= 2:
            add(f"more PGD steps/restarts do not raise accuracy{' (l2)' if norm_tail else ''}", not bad,
                "ok" if not bad else "; ".join(bad))
    for aa in (n for n in by_attack if n.startswith(("autoattack", "apgd"))):
        bad = [f"{aa} {acc:.1f}% > {p} {by_attack[p][e]:.1f}% at eps {e:g}" for e, acc in by_attack[aa].items()
               for p in steps_of if not p.endswith("_l2") and e in by_attack[p] and acc > by_attack[p][e] + tol]
        add(f"{aa} <= PGD", not bad, "ok" if not bad else "; ".join(bad))
    # Square (gradient-free) against the gradient attacks in the same norm (AutoAttack contains Square: not one)
    for sq in (n for n in by_attack if n.startswith("square")):
        grad_attacks = [n for n in by_attack if (n == "fgsm" or n in steps_of or n.startswith("apgd"))
                        and norm_of.get(n) == norm_of.get(sq)]
        bad, compared = [], False
        for e, acc in sorted(by_attack[sq].items()):
            grad = {p: by_attack[p][e] for p in grad_attacks if e in by_attack[p]}
            if e > 0 and grad:
                compared = True
                best = min(grad, key=grad.get)
                if acc < grad[best] - tol:
                    bad.append(f"{sq} {acc:.1f}% < {best} {grad[best]:.1f}% at eps {e:g}")
        if compared:
            add(f"gradient-free {sq} not stronger than gradient attacks", not bad, "ok" if not bad else "; ".join(bad))
    if "end-to-end" in by_attack and "oblivious" in by_attack:
        e2e, obl = by_attack["end-to-end"], by_attack["oblivious"]
        bad = [f"end-to-end {e2e[e]:.1f}% > oblivious {obl[e]:.1f}% at eps {e:g}" for e in e2e
               if e in obl and e2e[e] > obl[e] + tol]
        add("end-to-end <= oblivious", not bad, "ok" if not bad else "; ".join(bad))
    if "end-to-end" in by_attack and "bpda" in by_attack:
        e2e, bpda = by_attack["end-to-end"], by_attack["bpda"]
        bad = [f"bpda {bpda[e]:.1f}% < end-to-end {e2e[e]:.1f}% at eps {e:g}" for e in e2e
               if e in bpda and bpda[e] < e2e[e] - tol]
        add("end-to-end at least as strong as BPDA", not bad, "ok" if not bad else "; ".join(bad))
    # 10. attacks on the whole pipeline: an ensemble is at least as strong as end-to-end PGD, and Square
    # (gradient-free) is not stronger than the gradient attacks through the pipeline
    if "end-to-end" in by_attack:
        e2e = by_attack["end-to-end"]
        for key in sorted(k for k in by_attack if k.startswith("end-to-end ")):
            spec = key.split(" ", 1)[1]
            if spec.startswith("square"):
                grads = {k: c for k, c in by_attack.items()
                         if k == "end-to-end" or (k.startswith("end-to-end ") and not k.startswith("end-to-end square"))}
                bad = []
                for e, acc in sorted(by_attack[key].items()):
                    best = min((c[e], k) for k, c in grads.items() if e in c)
                    if e > 0 and acc < best[0] - tol:
                        bad.append(f"{key} {acc:.1f}% < {best[1]} {best[0]:.1f}% at eps {e:g}")
                add(f"gradient-free {key} not stronger than gradient attacks through the pipeline", not bad,
                    "ok" if not bad else "; ".join(bad) + ": the pipeline's gradient misleads PGD")
            else:
                bad = [f"{key} {acc:.1f}% > end-to-end PGD {e2e[e]:.1f}% at eps {e:g}"
                       for e, acc in sorted(by_attack[key].items()) if e in e2e and acc > e2e[e] + tol]
                add(f"{key} <= end-to-end PGD", not bad, "ok" if not bad else "; ".join(bad))
    if gradient_stats is not None:
        d = gradient_stats["dead_fraction"]
        add("input gradients exist", d <= dead_tol,
            f"{d:.1f}% of examples have an all-zero or non-finite input gradient (must be <= {dead_tol:g}%); "
            f"median norm {gradient_stats['median_grad_norm']:.3g}")
    return checks


def report_checks(checks: list[dict[str, Any]], label: str = "", warn: bool = True) -> str:
    """The checklist as text; with ``warn`` a :class:`GradientMaskingWarning` names every failed check."""
    lines = [f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in checks]
    failed = [c for c in checks if not c["passed"]]
    if failed and warn:
        warnings.warn(f"{label + ': ' if label else ''}{len(failed)} sanity check(s) failed, suspect gradient masking "
                      f"(the robust accuracy may be an overestimate): "
                      + "; ".join(f"{c['check']} ({c['detail']})" for c in failed), GradientMaskingWarning, stacklevel=2)
    return "\n".join(lines)


def large_eps_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str], eps_list: list[float],
                   large_eps: float | None, norm: str = "linf", batch_size: int = 500, seed: int = 0,
                   progress: bool = True) -> list[dict[str, Any]]:
    """The checklist's "reaches ~0" point: the strongest PGD of ``attacks`` (most steps x restarts,
    else PGD-100) at ``large_eps``; [] when ``large_eps`` is None or already in ``eps_list``."""
    from .attacks import strongest_pgd
    if large_eps is None or large_eps in eps_list:
        return []
    check_number("large_eps", large_eps, low=0.0, low_open=True, high=1.0 if norm == "linf" else None)
    return sweep(model, x, y, [strongest_pgd(attacks) or "pgd100"], [large_eps], norm=norm, batch_size=batch_size,
                 seed=seed, progress=progress)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: list[float],
             attacks: tuple[str, ...] = ("fgsm", "pgd10", "pgd40", "pgd40x3"), norm: str = "linf",
             large_eps: float | None = None, batch_size: int = 500, seed: int = 0, progress: bool = True,
             label: str = "", warn: bool = True) -> dict[str, Any]:
    """A sweep plus the checklist, run together: ``{"rows", "checks", "passed", "gradient_stats", "text",
    "worst_case"}`` (``worst_case``: :func:`per_example_worst_case` of the rows, per eps).

    ``large_eps`` (default 1.0 in Linf, the whole pixel box) is added for the strongest PGD so
    the "reaches ~0" check has its point. Failed checks raise a :class:`GradientMaskingWarning`.
    """
    if large_eps is None and norm == "linf":
        large_eps = 1.0
    rows = sweep(model, x, y, list(attacks), eps_list, norm=norm, batch_size=batch_size, seed=seed, progress=progress)
    rows += large_eps_rows(model, x, y, list(attacks), eps_list, large_eps, norm, batch_size, seed, progress)
    stats = input_gradient_stats(model, x, y, batch_size)
    checks = checklist(rows, stats, large_eps=large_eps, n=len(x))
    text = report_checks(checks, label=label, warn=warn)
    return {"rows": rows, "checks": checks, "passed": all(c["passed"] for c in checks), "gradient_stats": stats,
            "text": text, "worst_case": per_example_worst_case(rows)}
