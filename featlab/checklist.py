"""The evaluation checklist (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
arXiv 1902.06705): sanity checks on a sweep's rows that catch gradient masking.

Attacks are identified by their spec (:func:`featlab.attacks.parse`) and the metadata of their kind
(:data:`featlab.attacks.REGISTRY`: iterative, gradient-free, parameter-free, composite), not by
their names.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .attacks import REGISTRY, GradientMaskingWarning, Spec, canonical_norm, parse
from ._utils import check_choice
from .data import DATASETS, format_eps


@dataclass(frozen=True)
class Check:
    """One registered check: its stable ``id`` (select checks by it, never by their text), the ``symptom`` it
    looks for, ``why`` that means gradient masking, what to run ``next``, and ``run`` (the function that decides
    it on a :class:`Rows`, yielding ``(name, passed, detail, eps)`` for every comparison it can make; ``eps``: the
    eps its failures concern, or None for a check about every eps)."""

    id: str
    symptom: str
    why: str
    next: str
    run: Callable[["Rows"], Iterator[tuple[str, bool, str, list[float] | None]]]


#: every check, in the order :func:`checklist` runs them (see :func:`page` for the table)
REGISTRY_OF_CHECKS: dict[str, Check] = {}


def check(check_id: str, symptom: str, why: str, next: str):
    """Register a check: the decorated function takes the :class:`Rows` and yields (name, passed, detail, eps)."""
    def register(fn: Callable[["Rows"], Iterator[tuple[str, bool, str, list[float] | None]]]):
        REGISTRY_OF_CHECKS[check_id] = Check(check_id, symptom, why, next, fn)
        return fn
    return register


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


def _uses_gradients_only(s: Spec) -> bool:
    """FGSM, PGD, APGD: not Square, not AutoAttack (which holds Square)."""
    return not s.kind.gradient_free and not any(m in REGISTRY and REGISTRY[m].gradient_free for m in s.kind.members)


@dataclass
class Rows:
    """What every check reads: the rows' accuracy per attack (or threat model) and eps, each attack's spec and norm,
    and the tolerances of :func:`checklist`."""

    by_attack: dict[str, dict[float, float]]
    spec_of: dict[str, Spec | None]
    norm_of: dict[str, str | None]
    gradient_stats: dict[str, float] | None
    large_eps: float | None
    tol: float
    zero_tol: float
    dead_tol: float
    gap_tol: float
    dataset: str | None

    @classmethod
    def of(cls, rows: list[dict[str, Any]], **settings: Any) -> "Rows":
        by_attack: dict[str, dict[float, float]] = {}
        spec_of: dict[str, Spec | None] = {}
        norm_of: dict[str, str | None] = {}     # an attack's norm: its rows' "norm", else its spec's
        for r in rows:
            key = _row_key(r)
            # an accuracy counts images: rounded to 1e-4 points, float32's last bits (97.50000238 for 39 of 40)
            # cannot turn one image's worth of slack into a failure
            by_attack.setdefault(key, {})[float(r["eps"])] = round(float(r["robust_acc"]), 4)
            spec_of.setdefault(key, _spec(key))
            if float(r["eps"]) > 0 and key not in norm_of:
                norm_of[key] = canonical_norm(r.get("norm")) or (spec_of[key].norm if spec_of[key] else None)
        return cls(by_attack, spec_of, norm_of, **settings)

    @property
    def plain(self) -> dict[str, Spec]:
        """The attacks run on the model itself (not "end-to-end <attack>" on a pipeline), with their specs."""
        return {k: s for k, s in self.spec_of.items() if s is not None and not k.startswith("end-to-end ")}

    @property
    def pgd_effort(self) -> dict[str, int]:
        """Each PGD's steps x restarts."""
        return {k: s.effort for k, s in self.plain.items() if s.kind.name == "pgd"}

    def fe(self, e: float, key: str) -> str:
        """An eps in a detail, in the unit of ``key``'s norm (8/255 on CIFAR in Linf)."""
        return format_eps(e, self.dataset, self.norm_of.get(key) or "linf") if self.dataset else f"{e:g}"


class _Failure(str):
    """One failed comparison's text, carrying the eps it concerns (``eps``), so that a reader of the check selects
    failures by eps without parsing the text."""

    eps: tuple[float, ...] = ()


def _at(text: str, *eps: float) -> _Failure:
    out = _Failure(text)
    out.eps = tuple(float(e) for e in eps)
    return out


def _verdict(bad: list[_Failure], suffix: str = "") -> tuple[bool, str, list[float]]:
    """(passed, detail, the eps of the failures, sorted)."""
    return not bad, "ok" if not bad else "; ".join(bad) + suffix, sorted({e for b in bad for e in b.eps})


@check("monotone", "accuracy rises as eps grows",
       "a larger ball holds every smaller one: a working attack can only do better",
       "more steps or restarts at the larger eps")
def _monotone(r: Rows):
    for name, curve in sorted(r.by_attack.items()):
        eps = sorted(curve)
        if len(eps) >= 2:
            rises = [(a, b) for a, b in zip(eps, eps[1:]) if curve[b] > curve[a] + r.tol]
            yield (f"monotone in eps ({name})", *_verdict([_at(f"{curve[a]:.1f}% at eps {r.fe(a, name)} -> "
                                                               f"{curve[b]:.1f}% at eps {r.fe(b, name)}", a, b)
                                                           for a, b in rises]))


@check("reaches-zero", "accuracy stays above ~0 at a huge eps (Linf 1: any image)",
       "there the attacker may draw any image; an attack that cannot is blocked, not beaten", "BPDA or Square")
def _reaches_zero(r: Rows):
    if r.large_eps is None:
        return
    at = {n: c[r.large_eps] for n, c in r.by_attack.items() if r.large_eps in c and n not in ("none", "oblivious")}
    if at:
        best = min(at, key=at.get)
        yield (f"reaches ~0 at eps {r.large_eps:g}", at[best] <= r.zero_tol,
               f"strongest attack {best}: {at[best]:.1f}% (must be <= {r.zero_tol:g}%)", None)   # None: every eps


@check("iterative-vs-fgsm", "one FGSM step beats PGD or AutoAttack",
       "iterating should only help; a local gradient that misleads the iterations is masking", "Square, more restarts")
def _iterative_vs_fgsm(r: Rows):
    # FGSM is Linf: compare it with the iterative gradient attacks in Linf (not a pgdN_l2 spec)
    iterative = [k for k, s in r.plain.items() if s.kind.iterative and s.norm != "l2"]
    for f in (k for k, s in r.plain.items() if s.kind.name == "fgsm"):
        fg = r.by_attack[f]
        bad = [_at(f"{n} {r.by_attack[n][e]:.1f}% > {f} {fg[e]:.1f}% at eps {r.fe(e, f)}", e) for n in iterative
               for e, acc in r.by_attack[n].items() if e in fg and e > 0 and acc > fg[e] + r.tol]
        if iterative:
            yield ("iterative attacks at least as strong as FGSM", *_verdict(bad))


@check("more-effort", "more PGD steps or restarts raise accuracy", "more search can only find more adversarial examples",
       "APGD / AutoAttack")
def _more_effort(r: Rows):
    effort, plain = r.pgd_effort, r.plain
    for l2 in (False, True):
        group = sorted((k for k in effort if (plain[k].norm == "l2") == l2), key=effort.get)
        # every pair where one has strictly more steps x restarts (pgd40 and pgd40@0.01: the same effort, not compared)
        pairs = [(w, st) for i, w in enumerate(group) for st in group[i + 1:] if effort[st] > effort[w]]
        bad = [_at(f"{strong} {acc:.1f}% > {weak} {r.by_attack[weak][e]:.1f}% at eps {r.fe(e, strong)}", e)
               for weak, strong in pairs for e, acc in r.by_attack[strong].items()
               if e in r.by_attack[weak] and acc > r.by_attack[weak][e] + r.tol]
        if pairs:
            yield (f"more PGD steps/restarts do not raise accuracy{' (l2)' if l2 else ''}", *_verdict(bad))


def _ensembles(r: Rows):
    """(ensemble attack, {Linf PGD: its curve}) for every parameter-free attack (APGD, AutoAttack) on the model."""
    pgds = {p: r.by_attack[p] for p in r.pgd_effort if r.plain[p].norm != "l2"}
    return [(aa, pgds) for aa, s in r.plain.items() if s.kind.parameter_free]


@check("ensemble-vs-pgd", "AutoAttack or APGD leaves more than PGD",
       "the ensemble holds PGD's kind of step; beating it means its step size schedule was misled",
       "the per-image worst case of both")
def _ensemble_vs_pgd(r: Rows):
    for aa, pgds in _ensembles(r):
        bad = [_at(f"{aa} {acc:.1f}% > {p} {c[e]:.1f}% at eps {r.fe(e, aa)}", e) for e, acc in r.by_attack[aa].items()
               for p, c in pgds.items() if e in c and acc > c[e] + r.tol]
        yield (f"{aa} <= PGD", *_verdict(bad))


@check("pgd-vs-ensemble-gap", "PGD far above AutoAttack / APGD",
       "PGD's fixed steps follow a masked or shattered gradient that the adaptive ensemble escapes",
       "report the ensemble's number")
def _pgd_vs_ensemble_gap(r: Rows):
    for aa, pgds in _ensembles(r):
        far = [_at(f"{p} {c[e]:.1f}% vs {aa} {acc:.1f}% at eps {r.fe(e, aa)}", e)
               for e, acc in sorted(r.by_attack[aa].items())
               for p, c in pgds.items() if e in c and c[e] > acc + r.gap_tol]
        if any(e in c for c in pgds.values() for e in r.by_attack[aa]):
            yield (f"PGD not far weaker than {aa}",
                   *_verdict(far, f" (more than {r.gap_tol:g} points): PGD's gradient is unreliable here, report {aa}"))


@check("gradient-free", "Square (no gradients) beats the gradient attacks", "the gradients point the wrong way",
       "report Square; try BPDA or EOT on the defense")
def _gradient_free(r: Rows):
    plain = r.plain
    for sq in (k for k, s in plain.items() if s.kind.gradient_free):
        grad_attacks = [k for k, s in plain.items() if _uses_gradients_only(s) and r.norm_of.get(k) == r.norm_of.get(sq)]
        bad, compared = [], False
        for e, acc in sorted(r.by_attack[sq].items()):
            grad = {p: r.by_attack[p][e] for p in grad_attacks if e in r.by_attack[p]}
            if e > 0 and grad:
                compared = True
                best = min(grad, key=grad.get)
                if acc < grad[best] - r.tol:
                    bad.append(_at(f"{sq} {acc:.1f}% < {best} {grad[best]:.1f}% at eps {r.fe(e, sq)}", e))
        if compared:
            yield (f"gradient-free {sq} not stronger than gradient attacks", *_verdict(bad))


@check("end-to-end-vs-oblivious", "attacking through the defense does worse than ignoring it",
       "the defense's gradient misleads the attack", "BPDA")
def _end_to_end_vs_oblivious(r: Rows):
    if "end-to-end" in r.by_attack and "oblivious" in r.by_attack:
        e2e, obl = r.by_attack["end-to-end"], r.by_attack["oblivious"]
        yield ("end-to-end <= oblivious", *_verdict([_at(f"end-to-end {e2e[e]:.1f}% > oblivious {obl[e]:.1f}% at eps "
                                                         f"{r.fe(e, 'end-to-end')}", e) for e in e2e
                                                     if e in obl and e2e[e] > obl[e] + r.tol]))


@check("end-to-end-vs-bpda", "BPDA (identity on the way back) beats exact gradients through the preprocessing",
       "the preprocessing's gradient is useless (rounding, binarisation, median)", "report BPDA")
def _end_to_end_vs_bpda(r: Rows):
    if "end-to-end" in r.by_attack and "bpda" in r.by_attack:
        e2e, bpda = r.by_attack["end-to-end"], r.by_attack["bpda"]
        yield ("end-to-end at least as strong as BPDA", *_verdict([_at(f"bpda {bpda[e]:.1f}% < end-to-end {e2e[e]:.1f}% "
                                                                       f"at eps {r.fe(e, 'end-to-end')}", e) for e in e2e
                                                                   if e in bpda and bpda[e] < e2e[e] - r.tol]))


def _through(r: Rows) -> dict[str, Spec]:
    """The attacks run on the whole pipeline ("end-to-end <attack>"), when end-to-end PGD ran too."""
    if "end-to-end" not in r.by_attack:
        return {}
    return {k: s for k, s in sorted(r.spec_of.items()) if k.startswith("end-to-end ") and s is not None}


@check("pipeline-gradient-free", "Square through the pipeline beats the gradient attacks through it",
       "the pipeline's gradient misleads PGD", "report Square through the pipeline")
def _pipeline_gradient_free(r: Rows):
    through = _through(r)
    for key, s in through.items():
        if s.kind.gradient_free:
            grads = {k: r.by_attack[k] for k, t in through.items() if _uses_gradients_only(t)}
            grads["end-to-end"] = r.by_attack["end-to-end"]
            bad = []
            for e, acc in sorted(r.by_attack[key].items()):
                best = min((c[e], k) for k, c in grads.items() if e in c)
                if e > 0 and acc < best[0] - r.tol:
                    bad.append(_at(f"{key} {acc:.1f}% < {best[1]} {best[0]:.1f}% at eps {r.fe(e, key)}", e))
            yield (f"gradient-free {key} not stronger than gradient attacks through the pipeline",
                   *_verdict(bad, ": the pipeline's gradient misleads PGD"))


@check("pipeline-ensemble-vs-pgd", "AutoAttack / APGD through the pipeline leaves more than end-to-end PGD",
       "through the defense, the ensemble holds PGD's kind of step; beating it means its step size schedule was "
       "misled by the pipeline's gradient", "the per-image worst case")
def _pipeline_ensemble_vs_pgd(r: Rows):
    for key, s in _through(r).items():
        if not s.kind.gradient_free:
            e2e = r.by_attack["end-to-end"]
            yield (f"{key} <= end-to-end PGD", *_verdict([_at(f"{key} {acc:.1f}% > end-to-end PGD {e2e[e]:.1f}% at eps "
                                                              f"{r.fe(e, key)}", e) for e, acc in sorted(r.by_attack[key].items())
                                                          if e in e2e and acc > e2e[e] + r.tol]))


@check("pipeline-pgd-vs-ensemble-gap", "end-to-end PGD far above the ensemble through the pipeline",
       "through the defense, PGD's fixed steps follow a masked or shattered gradient that an adaptive attack (APGD, "
       "alone or in AutoAttack's ensemble) escapes, or PGD's budget is too small", "report the ensemble")
def _pipeline_pgd_vs_ensemble_gap(r: Rows):
    for key, s in _through(r).items():
        if not s.kind.gradient_free and s.kind.parameter_free:
            e2e = r.by_attack["end-to-end"]
            far = [_at(f"end-to-end PGD {e2e[e]:.1f}% vs {key} {acc:.1f}% at eps {r.fe(e, key)}", e)
                   for e, acc in sorted(r.by_attack[key].items()) if e in e2e and e2e[e] > acc + r.gap_tol]
            yield (f"end-to-end PGD not far weaker than {key}",
                   *_verdict(far, f" (more than {r.gap_tol:g} points): PGD's gradient through the pipeline is "
                                  f"unreliable, report {key.split()[1]}"))


@check("gradients-exist", "many images have an all-zero or non-finite input gradient",
       "no gradient, nothing for a gradient attack to follow", "Square, BPDA")
def _gradients_exist(r: Rows):
    if r.gradient_stats is not None:
        d = r.gradient_stats["dead_fraction"]
        yield ("input gradients exist", d <= r.dead_tol,
               f"{d:.1f}% of examples have an all-zero or non-finite input gradient (must be <= {r.dead_tol:g}%); "
               f"median norm {r.gradient_stats['median_grad_norm']:.3g}", None)        # None: every eps


#: every check's stable id -> (symptom, why it means masking, what to run next), from the registry
CHECK_IDS: dict[str, tuple[str, str, str]] = {c.id: (c.symptom, c.why, c.next) for c in REGISTRY_OF_CHECKS.values()}


GAP_TOL = 10.0     # points: how far PGD may sit above an ensemble (pgd-vs-ensemble-gap, pipeline-pgd-vs-ensemble-gap)


def slack(n: int | None, tol: float = 1.0) -> float:
    """The slack, in points, a check with tolerance ``tol`` allows on ``n`` images: ``tol``, but never less than one
    image's worth (100 / ``n``), so one flipped image is not a failure. ``n`` None or 0: ``tol``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative int (the number of evaluated images) or None, got {n!r}")
    return max(float(tol), 100.0 / n) if n else float(tol)


def checklist(rows: list[dict[str, Any]], gradient_stats: dict[str, float] | None = None,
              large_eps: float | None = None, tol: float = 1.0, zero_tol: float = 5.0,
              dead_tol: float = 1.0, n: int | None = None, gap_tol: float = GAP_TOL,
              dataset: str | None = None) -> list[dict[str, Any]]:
    """Sanity checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness", arXiv 1902.06705): every
    check of :data:`REGISTRY_OF_CHECKS`, in its order, on rows of :func:`featlab.evaluate.sweep` (``attack``,
    ``eps``, ``robust_acc``) and, for preprocessing defenses, of :func:`featlab.evaluate.preprocessing_defense`
    (``threat_model``). Each check: ``{"id", "check", "passed", "detail", "eps"}`` (``eps``: the eps its failures
    concern, [] when it passed; None for a check about every eps); a check the rows cannot decide is left out. :func:`page` documents each (symptom, why it means masking, what to run next).

    Attacks are recognised by their spec (:func:`featlab.attacks.parse`); a row whose attack is no spec (a name
    from a ``sweep`` factory dict) enters the monotonicity check only. ``large_eps`` (e.g. 1.0 in Linf: any
    image) is where the strongest attack must leave at most ``zero_tol`` percent; ``gradient_stats`` (from
    :func:`featlab.metrics.input_gradient_stats`) feeds gradients-exist (at most ``dead_tol`` percent dead, at
    least one image's worth: every image without a gradient is one a gradient attack cannot touch, so a few
    percent dead already inflate a robust accuracy by that much);
    ``gap_tol``: how far PGD may sit above an ensemble. Comparisons allow ``tol`` points of slack, at least one
    image's worth (100 / ``n``) when the number of evaluated images ``n`` is given, so one flipped image is not a
    failure. ``dataset``: the details write eps as that dataset's people do (:func:`featlab.data.format_eps`).
    """
    if dataset is not None:
        check_choice("dataset", dataset, DATASETS)
    tol, dead_tol = slack(n, tol), slack(n, dead_tol)
    r = Rows.of(rows, gradient_stats=gradient_stats, large_eps=large_eps, tol=tol, zero_tol=zero_tol,
                dead_tol=dead_tol, gap_tol=gap_tol, dataset=dataset)
    return [{"id": c.id, "check": name, "passed": bool(passed), "detail": detail, "eps": eps}
            for c in REGISTRY_OF_CHECKS.values() for name, passed, detail, eps in c.run(r)]


def thresholds(n: int | None = None, tol: float = 1.0, zero_tol: float = 5.0, dead_tol: float = 1.0,
               gap_tol: float = GAP_TOL) -> str:
    """The slack :func:`checklist` allows with these arguments on ``n`` images, as one sentence: why a gap of 10
    points passes where one of 15 fails, and why one image of 80 (1.25%) is inside the 1% rules."""
    tol, dead_tol = slack(n, tol), slack(n, dead_tol)
    on = f" on n={n} images (one image is {100.0 / n:.3g} points)" if n else ""
    return (f"the checks' slack{on}: a comparison fails when it is off by more than {tol:.3g} point{'s' if tol != 1 else ''}; PGD may sit up "
            f"to {gap_tol:g} points above an ensemble (more fails pgd-vs-ensemble-gap); at most {dead_tol:.3g}% of "
            f"the images may have no input gradient; at the huge eps the strongest attack must leave at most "
            f"{zero_tol:g}%")


def page() -> str:
    """The checklist as a Markdown page, generated from the registry (``docs/checklist.md``)."""
    lines = ["# The evaluation checklist", "",
             "Generated from `featlab.checklist.REGISTRY_OF_CHECKS` by `featlab.checklist.page()`; do not edit by hand.",
             "Each check runs whenever the attacks of an evaluation can decide it (`featlab.checklist.checklist`); a",
             "failed check raises a `GradientMaskingWarning`. Select checks by their id.", "",
             "| id | symptom | why it means gradient masking | run next |", "|---|---|---|---|"]
    lines += [f"| `{c.id}` | {c.symptom} | {c.why} | {c.next} |" for c in REGISTRY_OF_CHECKS.values()]
    return "\n".join(lines) + "\n"


def ran(checks: list[dict[str, Any]]) -> str:
    """Which checks these are, by id with how many of each (one per attack, norm or defense it compares):
    "monotone x3, iterative-vs-fgsm, ...", in the registry's order. Why two models get different counts: each
    check runs only where the attacks that ran can decide it."""
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.get("id", c["check"])] = counts.get(c.get("id", c["check"]), 0) + 1
    order = list(REGISTRY_OF_CHECKS)
    return ", ".join(f"{k} x{v}" if v > 1 else k
                     for k, v in sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def summary(checks: list[dict[str, Any]], label: str = "", warn: bool = True) -> str:
    """Only what failed, one "FAIL <check>: <detail>" line each, or one line saying that all the checks
    passed: what a notebook prints instead of every PASS line. Either way it says which checks ran
    (:func:`ran`), so that two models' counts can be told apart."""
    failed = [c for c in checks if not c["passed"]]
    if not checks:
        return f"{label + ': ' if label else ''}no check could be decided from these attacks"
    if not failed:
        return f"{label + ': ' if label else ''}all {len(checks)} checks pass ({ran(checks)})"
    report_checks(failed, label=label, warn=warn)
    return "\n".join([f"{label + ': ' if label else ''}{len(failed)} of {len(checks)} checks FAIL (ran: {ran(checks)})"]
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


