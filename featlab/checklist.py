"""The evaluation checklist (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
arXiv 1902.06705): sanity checks on a sweep's rows that catch gradient masking.

Attacks are identified by their spec (:func:`featlab.attacks.parse`) and the metadata of their kind
(:data:`featlab.attacks.REGISTRY`: iterative, gradient-free, parameter-free, composite), not by
their names.
"""
from __future__ import annotations

import warnings
from typing import Any

from .attacks import REGISTRY, GradientMaskingWarning, Spec, canonical_norm, parse
from ._utils import check_choice
from .data import DATASETS, format_eps


#: every check's stable id -> (the symptom it looks for, why that means gradient masking, what to run next);
#: a check dict's "id" is one of these (select checks by id, never by their text)
CHECK_IDS: dict[str, tuple[str, str, str]] = {
    "monotone": ("accuracy rises as eps grows", "a larger ball holds every smaller one: a working attack can only do "
                 "better", "more steps or restarts at the larger eps"),
    "reaches-zero": ("accuracy stays above ~0 at a huge eps (Linf 1: any image)", "there the attacker may draw any "
                     "image; an attack that cannot is blocked, not beaten", "BPDA or Square"),
    "iterative-vs-fgsm": ("one FGSM step beats PGD or AutoAttack", "iterating should only help; a local gradient that "
                          "misleads the iterations is masking", "Square, more restarts"),
    "more-effort": ("more PGD steps or restarts raise accuracy", "more search can only find more adversarial examples",
                    "APGD / AutoAttack"),
    "ensemble-vs-pgd": ("AutoAttack or APGD leaves more than PGD", "the ensemble holds PGD's kind of step; beating it "
                        "means its step size schedule was misled", "the per-image worst case of both"),
    "pgd-vs-ensemble-gap": ("PGD far above AutoAttack / APGD", "PGD's fixed steps follow a masked or shattered "
                            "gradient that the adaptive ensemble escapes", "report the ensemble's number"),
    "gradient-free": ("Square (no gradients) beats the gradient attacks", "the gradients point the wrong way",
                      "report Square; try BPDA or EOT on the defense"),
    "end-to-end-vs-oblivious": ("attacking through the defense does worse than ignoring it", "the defense's "
                                "gradient misleads the attack", "BPDA"),
    "end-to-end-vs-bpda": ("BPDA (identity on the way back) beats exact gradients through the preprocessing", "the "
                           "preprocessing's gradient is useless (rounding, binarisation, median)", "report BPDA"),
    "pipeline-gradient-free": ("Square through the pipeline beats the gradient attacks through it", "the pipeline's "
                               "gradient misleads PGD", "report Square through the pipeline"),
    "pipeline-ensemble-vs-pgd": ("AutoAttack / APGD through the pipeline leaves more than end-to-end PGD", "as "
                                 "ensemble-vs-pgd, through the defense", "the per-image worst case"),
    "pipeline-pgd-vs-ensemble-gap": ("end-to-end PGD far above the ensemble through the pipeline", "as "
                                     "pgd-vs-ensemble-gap, through the defense", "report the ensemble"),
    "gradients-exist": ("many images have an all-zero or non-finite input gradient", "no gradient, nothing for a "
                        "gradient attack to follow", "Square, BPDA"),
}


def _spec(name: str) -> Spec | None:
    """The spec of a row key ("pgd40", "end-to-end apgd" -> "apgd"); None for a threat model name."""
    try:
        return parse(name.split(" ", 1)[1] if name.startswith("end-to-end ") else name)
    except (ValueError, TypeError):
        return None


def _row_key(r: dict[str, Any]) -> str:
    """A checklist row's name: its attack, or for a preprocessing defense its threat model (PGD), and
    "end-to-end <attack>" for another attack run on the whole pipeline."""
    if "threat_model" not in r:
        return str(r.get("attack"))
    attack = str(r.get("attack") or "").split(" ")[0]
    spec = _spec(attack) if attack else None
    if r["threat_model"] == "end-to-end" and attack and (spec is None or spec.kind.name != "pgd"):
        return f"end-to-end {attack}"         # another attack on the whole pipeline (a name that is no spec too)
    return str(r["threat_model"])


def checklist(rows: list[dict[str, Any]], gradient_stats: dict[str, float] | None = None,
              large_eps: float | None = None, tol: float = 1.0, zero_tol: float = 5.0,
              dead_tol: float = 50.0, n: int | None = None, gap_tol: float = 10.0,
              dataset: str | None = None) -> list[dict[str, Any]]:
    """Sanity checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness", arXiv 1902.06705).

    Works on rows of :func:`featlab.evaluate.sweep` (``attack``, ``eps``, ``robust_acc``) and, for
    preprocessing defenses, rows of :func:`featlab.evaluate.preprocessing_defense` (``threat_model``).
    Attacks are recognised by their spec (:func:`featlab.attacks.parse`); a row whose attack is no spec
    (a name from a ``sweep`` factory dict) enters the monotonicity check only. A check that the rows
    cannot decide is left out. Each check: ``{"check", "passed", "detail"}``.

    1. monotone: per attack, accuracy does not rise (by more than ``tol`` points) as eps grows;
    2. reaches zero: at ``large_eps`` (e.g. 1.0 in Linf: any image) the strongest attack leaves
       at most ``zero_tol`` percent;
    3. iterative >= one-step: every Linf PGD/AutoAttack is at least as strong as FGSM at the same eps;
    4. more effort does not help the model: PGD with more steps x restarts is not weaker;
    5. AutoAttack <= PGD (same eps);
    6. end-to-end <= oblivious for preprocessing defenses (same eps);
    7. gradients exist: at most ``dead_tol`` percent of examples have an all-zero or non-finite
       input gradient (``gradient_stats`` from :func:`featlab.metrics.input_gradient_stats`);
    8. gradient-free attacks are not stronger: Square (random search on the outputs only) leaves
       no lower accuracy than the best gradient attack (FGSM, PGD, APGD) at the same eps and norm.
       If it does, the gradients mislead the white-box attacks, which is gradient masking.
    9. for preprocessing defenses, end-to-end PGD is at least as strong as BPDA (same eps): the exact
       gradient through a differentiable preprocessing should not do worse than pretending it is the
       identity. If it does, the preprocessing's gradient is useless or misleading (binarisation,
       rounding, a median filter), which is gradient masking: report BPDA.
    10. for preprocessing defenses with attacks on the whole pipeline (``pipeline_attacks`` of
        :func:`featlab.evaluate.preprocessing_defense`): AutoAttack / APGD through it is at least as
        strong as end-to-end PGD, and Square through it is not stronger than the attacks through it
        that use gradients only (PGD, APGD; not AutoAttack, which holds Square itself), as in check 8.
    11. PGD is not far weaker than the parameter-free ensemble (APGD, AutoAttack) on the same model
        or pipeline: a gap of more than ``gap_tol`` points means PGD's gradient is unreliable there
        (a masked or shattered gradient, e.g. through a clamp), so a PGD number on this defense
        overstates its robustness and the ensemble's number is the one to report.

    Comparisons allow ``tol`` points of slack, at least one image's worth (100 / ``n``) when the
    number of evaluated images ``n`` is given, so a single flipped image is not a failure.

    ``dataset``: the details write eps as that dataset's people do (:func:`featlab.data.format_eps`:
    "8/255" in Linf on CIFAR); None: as a plain number.
    """
    if dataset is not None:
        check_choice("dataset", dataset, DATASETS)
    if n:
        tol = max(tol, 100.0 / n)
    checks: list[dict[str, Any]] = []

    def add(check_id: str, name: str, passed: bool, detail: str) -> None:
        assert check_id in CHECK_IDS, check_id
        checks.append({"id": check_id, "check": name, "passed": bool(passed), "detail": detail})

    by_attack: dict[str, dict[float, float]] = {}
    spec_of: dict[str, Spec | None] = {}
    norm_of: dict[str, str | None] = {}     # an attack's norm: its rows' "norm", else its spec's
    for r in rows:
        key = _row_key(r)
        by_attack.setdefault(key, {})[float(r["eps"])] = float(r["robust_acc"])
        spec_of.setdefault(key, _spec(key))
        if float(r["eps"]) > 0 and key not in norm_of:
            norm_of[key] = canonical_norm(r.get("norm")) or (spec_of[key].norm if spec_of[key] else None)
    plain = {k: s for k, s in spec_of.items() if s is not None and not k.startswith("end-to-end ")}

    def fe(e: float, key: str) -> str:      # an eps in a detail, in the unit of ``key``'s norm
        return format_eps(e, dataset, norm_of.get(key) or "linf") if dataset else f"{e:g}"

    def uses_gradients_only(s: Spec) -> bool:       # FGSM, PGD, APGD: not Square, not AutoAttack (holds Square)
        return not s.kind.gradient_free and not any(m in REGISTRY and REGISTRY[m].gradient_free for m in s.kind.members)

    for name, curve in sorted(by_attack.items()):
        eps_sorted = sorted(curve)
        if len(eps_sorted) >= 2:
            rises = [(a, b) for a, b in zip(eps_sorted, eps_sorted[1:]) if curve[b] > curve[a] + tol]
            add("monotone", f"monotone in eps ({name})", not rises,
                "ok" if not rises else "; ".join(f"{curve[a]:.1f}% at eps {fe(a, name)} -> {curve[b]:.1f}% at eps {fe(b, name)}"
                                                 for a, b in rises))
    if large_eps is not None:
        at = {n: c[large_eps] for n, c in by_attack.items() if large_eps in c and n not in ("none", "oblivious")}
        if at:
            best = min(at, key=at.get)
            add("reaches-zero", f"reaches ~0 at eps {large_eps:g}", at[best] <= zero_tol,
                f"strongest attack {best}: {at[best]:.1f}% (must be <= {zero_tol:g}%)")
    steps_of = {k: s.effort for k, s in plain.items() if s.kind.name == "pgd"}
    # FGSM is Linf: compare it with the iterative gradient attacks in Linf (not a pgdN_l2 spec)
    iterative = [k for k, s in plain.items() if s.kind.iterative and s.norm != "l2"]
    fgsm = [k for k, s in plain.items() if s.kind.name == "fgsm"]
    for f in fgsm:
        bad = [(n, e) for n in iterative for e, acc in by_attack[n].items()
               if e in by_attack[f] and e > 0 and acc > by_attack[f][e] + tol]
        if iterative:
            add("iterative-vs-fgsm", "iterative attacks at least as strong as FGSM", not bad,
                "ok" if not bad else "; ".join(f"{n} {by_attack[n][e]:.1f}% > {f} {by_attack[f][e]:.1f}% "
                                               f"at eps {fe(e, f)}" for n, e in bad))
    for l2 in (False, True):
        group = sorted((k for k in steps_of if (plain[k].norm == "l2") == l2), key=steps_of.get)
        bad = []
        # every pair where one has strictly more steps x restarts (pgd40 and pgd40@0.01: the same effort, not compared)
        pairs = [(w, st) for i, w in enumerate(group) for st in group[i + 1:] if steps_of[st] > steps_of[w]]
        for weak, strong in pairs:
            for e, acc in by_attack[strong].items():
                if e in by_attack[weak] and acc > by_attack[weak][e] + tol:
                    bad.append(f"{strong} {acc:.1f}% > {weak} {by_attack[weak][e]:.1f}% at eps {fe(e, strong)}")
        if pairs:
            add("more-effort", f"more PGD steps/restarts do not raise accuracy{' (l2)' if l2 else ''}", not bad,
                "ok" if not bad else "; ".join(bad))
    for aa in (k for k, s in plain.items() if s.kind.parameter_free):
        bad = [f"{aa} {acc:.1f}% > {p} {by_attack[p][e]:.1f}% at eps {fe(e, aa)}" for e, acc in by_attack[aa].items()
               for p in steps_of if plain[p].norm != "l2" and e in by_attack[p] and acc > by_attack[p][e] + tol]
        add("ensemble-vs-pgd", f"{aa} <= PGD", not bad, "ok" if not bad else "; ".join(bad))
        far = [f"{p} {by_attack[p][e]:.1f}% vs {aa} {acc:.1f}% at eps {fe(e, aa)}" for e, acc in sorted(by_attack[aa].items())
               for p in steps_of if plain[p].norm != "l2" and e in by_attack[p] and by_attack[p][e] > acc + gap_tol]
        if any(e in by_attack[p] for p in steps_of for e in by_attack[aa]):
            add("pgd-vs-ensemble-gap", f"PGD not far weaker than {aa}", not far,
                "ok" if not far else "; ".join(far) + f" (more than {gap_tol:g} points): PGD's gradient is unreliable "
                                                      f"here, report {aa}")
    # gradient-free attacks against the gradient attacks in the same norm
    for sq in (k for k, s in plain.items() if s.kind.gradient_free):
        grad_attacks = [k for k, s in plain.items() if uses_gradients_only(s) and norm_of.get(k) == norm_of.get(sq)]
        bad, compared = [], False
        for e, acc in sorted(by_attack[sq].items()):
            grad = {p: by_attack[p][e] for p in grad_attacks if e in by_attack[p]}
            if e > 0 and grad:
                compared = True
                best = min(grad, key=grad.get)
                if acc < grad[best] - tol:
                    bad.append(f"{sq} {acc:.1f}% < {best} {grad[best]:.1f}% at eps {fe(e, sq)}")
        if compared:
            add("gradient-free", f"gradient-free {sq} not stronger than gradient attacks", not bad, "ok" if not bad else "; ".join(bad))
    if "end-to-end" in by_attack and "oblivious" in by_attack:
        e2e, obl = by_attack["end-to-end"], by_attack["oblivious"]
        bad = [f"end-to-end {e2e[e]:.1f}% > oblivious {obl[e]:.1f}% at eps {fe(e, 'end-to-end')}" for e in e2e
               if e in obl and e2e[e] > obl[e] + tol]
        add("end-to-end-vs-oblivious", "end-to-end <= oblivious", not bad, "ok" if not bad else "; ".join(bad))
    if "end-to-end" in by_attack and "bpda" in by_attack:
        e2e, bpda = by_attack["end-to-end"], by_attack["bpda"]
        bad = [f"bpda {bpda[e]:.1f}% < end-to-end {e2e[e]:.1f}% at eps {fe(e, 'end-to-end')}" for e in e2e
               if e in bpda and bpda[e] < e2e[e] - tol]
        add("end-to-end-vs-bpda", "end-to-end at least as strong as BPDA", not bad, "ok" if not bad else "; ".join(bad))
    # 10. attacks on the whole pipeline: an ensemble is at least as strong as end-to-end PGD, and a
    # gradient-free attack is not stronger than the gradient attacks through the pipeline
    if "end-to-end" in by_attack:
        e2e = by_attack["end-to-end"]
        through = {k: s for k, s in spec_of.items() if k.startswith("end-to-end ") and s is not None}
        for key, s in sorted(through.items()):
            if s.kind.gradient_free:
                grads = {k: by_attack[k] for k, t in through.items() if uses_gradients_only(t)}
                grads["end-to-end"] = e2e
                bad = []
                for e, acc in sorted(by_attack[key].items()):
                    best = min((c[e], k) for k, c in grads.items() if e in c)
                    if e > 0 and acc < best[0] - tol:
                        bad.append(f"{key} {acc:.1f}% < {best[1]} {best[0]:.1f}% at eps {fe(e, key)}")
                add("pipeline-gradient-free", f"gradient-free {key} not stronger than gradient attacks through the pipeline", not bad,
                    "ok" if not bad else "; ".join(bad) + ": the pipeline's gradient misleads PGD")
            else:
                bad = [f"{key} {acc:.1f}% > end-to-end PGD {e2e[e]:.1f}% at eps {fe(e, key)}"
                       for e, acc in sorted(by_attack[key].items()) if e in e2e and acc > e2e[e] + tol]
                add("pipeline-ensemble-vs-pgd", f"{key} <= end-to-end PGD", not bad, "ok" if not bad else "; ".join(bad))
                if s.kind.parameter_free:
                    far = [f"end-to-end PGD {e2e[e]:.1f}% vs {key} {acc:.1f}% at eps {fe(e, key)}"
                           for e, acc in sorted(by_attack[key].items()) if e in e2e and e2e[e] > acc + gap_tol]
                    add("pipeline-pgd-vs-ensemble-gap", f"end-to-end PGD not far weaker than {key}", not far,
                        "ok" if not far else "; ".join(far) + f" (more than {gap_tol:g} points): PGD's gradient "
                                                              f"through the pipeline is unreliable, report {key.split()[1]}")
    if gradient_stats is not None:
        d = gradient_stats["dead_fraction"]
        add("gradients-exist", "input gradients exist", d <= dead_tol,
            f"{d:.1f}% of examples have an all-zero or non-finite input gradient (must be <= {dead_tol:g}%); "
            f"median norm {gradient_stats['median_grad_norm']:.3g}")
    return checks


def summary(checks: list[dict[str, Any]], label: str = "", warn: bool = True) -> str:
    """Only what failed, one "FAIL <check>: <detail>" line each, or one line saying that all the checks
    passed (and how many): what a notebook prints instead of every PASS line."""
    failed = [c for c in checks if not c["passed"]]
    if not checks:
        return f"{label + ': ' if label else ''}no check could be decided from these attacks"
    if not failed:
        return f"{label + ': ' if label else ''}all {len(checks)} checks pass"
    report_checks(failed, label=label, warn=warn)
    return "\n".join([f"{label + ': ' if label else ''}{len(failed)} of {len(checks)} checks FAIL"]
                     + [f"  FAIL  {c['check']}: {c['detail']}" for c in failed])


def report_checks(checks: list[dict[str, Any]], label: str = "", warn: bool = True) -> str:
    """The checklist as text; with ``warn`` a :class:`GradientMaskingWarning` names every failed check."""
    lines = [f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in checks]
    failed = [c for c in checks if not c["passed"]]
    if failed and warn:
        warnings.warn(f"{label + ': ' if label else ''}{len(failed)} sanity check(s) failed, suspect gradient masking "
                      f"(the robust accuracy may be an overestimate): "
                      + "; ".join(f"{c['check']} ({c['detail']})" for c in failed), GradientMaskingWarning, stacklevel=2)
    return "\n".join(lines)


