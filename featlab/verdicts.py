"""Verdicts that agree with their numbers: typed measurements in, one typed verdict per defense out.

The rules (``../shared/STYLE.md``, "A verdict is a claim about numbers"):

1. every number carries the n it ran on (:class:`Measurement`);
2. a gap within the binomial noise of its two n is a tie (:func:`compare`, :func:`tie`; Wilson score intervals,
   so that 0% and 100% keep the width their n allows);
3. a defense is judged, and defenses are ranked, by the worst case over the attacks that see it,
   never by an oblivious number (:func:`judge`, :func:`rank`);
3b. a status is a claim, so it is read from the worst case's 95% interval, not its point: a defense is called
   (partly) robust only when the whole interval clears the floor, and robust only when it clears the share of
   clean accuracy; two tied numbers near a line therefore get the same status far more often than by their points;
4. a failed checklist makes a number SUSPECT (gradient masking can hide a stronger attack) unless an
   attack that goes around masked gradients was already run: a gradient-free one (Square with at least
   :data:`SQUARE_MIN_QUERIES` queries, or AutoAttack, which holds Square) or BPDA. Then the worst case already includes it, and the verdict
   says so instead of asking for it.

    >>> v = judge("PGD-AT", Measurement("clean", 98.9, 1000),
    ...           [Measurement("pgd40", 93.1, 1000), Measurement("autoattack", 91.8, 500)], checks=[])
    >>> v.status, v.worst.attack
    (<Status.ROBUST: 'robust'>, 'autoattack')
    >>> print(v)

Introduced in notebooks/02 and 05, where every verdict is printed from these objects.
"""
from __future__ import annotations

import enum
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from ._utils import check_number

#: threat models that do not see the defense (a number of this kind never decides a verdict)
OBLIVIOUS = ("oblivious",)
#: attacks that go around masked gradients: if one ran, a failed gradient check is settled by it
SETTLERS = ("square", "autoattack", "bpda")
#: a Square run with fewer queries does not settle a failed check (AutoAttack's Square uses 5,000): it may stop
#: short of the adversarial examples that masked gradients hide, so a number it leaves high stays an upper bound
SQUARE_MIN_QUERIES = 1000
#: z of the tie rule: a gap within z standard errors of the difference is a tie (about 95%)
Z = 1.96
#: a gap beyond the noise band but within this factor of it is printed as "just above" (:func:`compare`)
JUST = 1.25


class Status(enum.Enum):
    """What a verdict concludes about one defense at one eps."""
    ROBUST = "robust"
    PARTLY = "partly robust"
    NOT_ROBUST = "not robust"
    OBLIVIOUS_ONLY = "robust only against an oblivious attacker"
    SUSPECT = "suspect"


@dataclass(frozen=True)
class Measurement:
    """One accuracy: ``acc`` percent of ``n`` images under ``attack`` (a spec such as "pgd40", a
    threat model such as "end-to-end" or "bpda", or "clean")."""
    attack: str
    acc: float
    n: int

    def __post_init__(self):
        check_number("acc", self.acc, low=0.0, high=100.0)
        check_number("n", self.n, low=1, integer=True)
        if not isinstance(self.attack, str) or not self.attack:
            raise ValueError(f"attack: a non-empty name (an attack spec or threat model), got {self.attack!r}")

    @property
    def sees_defense(self) -> bool:
        """False for a threat model that ignores the defense ("oblivious", "oblivious pgd40")."""
        return self.attack.split()[0] not in OBLIVIOUS

    @property
    def queries(self) -> int | None:
        """A Square run's query budget, from its spec ("square200" -> 200); None for any other attack, or a
        Square whose name gives none (a committed "square": 5,000)."""
        m = re.search(r"\bsquare(\d+)\b", self.attack)
        return int(m.group(1)) if m else None

    @property
    def goes_around_gradients(self) -> bool:
        """True for an attack that does not follow the defense's gradient (see :data:`SETTLERS`), at any budget."""
        return any(word.startswith(s) for word in self.attack.split() for s in SETTLERS)

    @property
    def settles_masking(self) -> bool:
        """True for an attack that does not follow the defense's gradient (see :data:`SETTLERS`), run with a full
        budget: a Square needs at least :data:`SQUARE_MIN_QUERIES` queries."""
        return self.goes_around_gradients and (self.queries is None or self.queries >= SQUARE_MIN_QUERIES)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson score interval of ``acc`` in points (:func:`wilson`). Unlike acc +- 1.96 standard errors
        it stays inside [0, 100] by itself and keeps a width at 0% and 100%: 0 of 50 images gives 0.0-7.1."""
        return wilson(self.acc, self.n)

    def __str__(self) -> str:
        return f"{self.acc:.1f}% (n={self.n})"


def wilson(acc: float, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``acc`` percent on ``n`` images, in points: the p whose
    binomial test at ``z`` would not reject the observed share. Near 0% and 100%, where acc +- z standard errors
    collapses to a point (0 of 100 images: +-0), it keeps the width that n allows (0 of 100: 0.0-3.7)."""
    check_number("acc", acc, low=0.0, high=100.0)
    check_number("n", n, low=1, integer=True)
    p, z2 = acc / 100.0, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, 100.0 * (centre - half)), min(100.0, 100.0 * (centre + half))


def noise_band(a: Measurement, b: Measurement, z: float = Z) -> float:
    """How far ``a`` may lie from ``b`` before the gap is more than binomial noise, in points, on the side the gap
    lies (Newcombe's hybrid score interval for a difference of two independent proportions, built from each one's
    Wilson interval): for a >= b, sqrt((a - lo_a)^2 + (hi_b - b)^2); for a < b the mirror image."""
    (lo_a, hi_a), (lo_b, hi_b) = wilson(a.acc, a.n, z), wilson(b.acc, b.n, z)
    if a.acc >= b.acc:
        return math.hypot(a.acc - lo_a, hi_b - b.acc)
    return math.hypot(hi_a - a.acc, b.acc - lo_b)


def tie(a: Measurement, b: Measurement, z: float = Z) -> bool:
    """True when the gap between ``a`` and ``b`` lies within the binomial noise of their n (:func:`noise_band`:
    0 inside the 95% interval of the difference), or is at most one image of the smaller n."""
    return abs(a.acc - b.acc) <= max(noise_band(a, b, z), 100.0 / min(a.n, b.n))


class SignTest(NamedTuple):
    """A paired sign test's result: ``k`` of ``n`` pairs with a < b, its ``z`` against a fair coin, the ``z_crit``
    it must exceed (Bonferroni-corrected for the tests made together) and whether it does (``significant``)."""
    k: int
    n: int
    z: float
    z_crit: float
    significant: bool


def sign_test(a: Sequence[float] | Any, b: Sequence[float] | Any, tests: int = 1, alpha: float = 0.05) -> SignTest:
    """Paired sign test of ``a < b`` (one pair per image): with no difference each pair is a fair coin, so k of n
    is Binomial(n, 1/2), z = (k - n/2) / sqrt(n/4). Significant when |z| exceeds the two-sided normal quantile of
    ``alpha / tests``: with ``tests`` sign tests read together (one per tap, say) the chance that any one of them
    calls a coin a difference stays at most ``alpha`` (Bonferroni; one test at 5%: 1.96, five: 2.58)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: one value per pair, the same number in each and at least one; got {len(a)} and {len(b)}")
    check_number("tests", tests, low=1, integer=True)
    check_number("alpha", alpha, low=0.0, high=0.5, low_open=True)
    k, n = sum(x < y for x, y in zip(a, b)), len(a)
    z = (k - n / 2) / math.sqrt(n / 4)
    z_crit = statistics.NormalDist().inv_cdf(1 - alpha / (2 * tests))
    return SignTest(k, n, z, z_crit, abs(z) > z_crit)


def compare(name_a: str, a: Measurement, name_b: str, b: Measurement, z: float = Z) -> str:
    """One sentence: which is higher ("just above" within :data:`JUST` times the band), or a tie, with both n and the
    noise band (the threshold :func:`tie` applies, at least one image). Gap and band get a second decimal where one
    would print them equal."""
    band = max(noise_band(a, b, z), 100.0 / min(a.n, b.n))
    gap = abs(a.acc - b.acc)
    d = 2 if f"{gap:.1f}" == f"{band:.1f}" else 1
    if tie(a, b, z):
        return (f"{name_a} {a} and {name_b} {b}: a tie (the gap, {gap:.{d}f} points, is within "
                f"the binomial noise of +-{band:.{d}f})")
    hi, lo = ((name_a, a), (name_b, b)) if a.acc > b.acc else ((name_b, b), (name_a, a))
    word = "is just above" if gap < JUST * band else "is above"      # a margin a few images could reverse
    return f"{hi[0]} {hi[1]} {word} {lo[0]} {lo[1]} (gap {gap:.{d}f} points, noise +-{band:.{d}f})"


@dataclass(frozen=True)
class Verdict:
    """The typed verdict on one defense: its status and the numbers that decided it."""
    name: str
    status: Status
    clean: Measurement
    worst: Measurement                       # the lowest accuracy over the attacks that see the defense
    eps_text: str
    oblivious: Measurement | None = None
    failed_checks: tuple[str, ...] = ()
    settled_by: Measurement | None = None    # the masking-proof attack already run, if a check failed
    measurements: tuple[Measurement, ...] = field(default=(), repr=False)
    floor: float = 10.0                      # judge's robust_floor

    @property
    def _failed_text(self) -> str:
        """The failed checks, each quoted: a check is named by what it expects ("input gradients exist"), so
        unquoted, "failed (input gradients exist)" read as if the failure were that they exist."""
        return ", ".join(f"'{c}'" for c in self.failed_checks)

    @property
    def gradient_only(self) -> bool:
        """True when no attack that goes around masked gradients (:data:`SETTLERS`) saw the defense at a full
        budget: the worst case is then an upper bound, whatever the checklist says."""
        return not any(m.settles_masking for m in self.measurements if m.sees_defense)

    @property
    def weak_square(self) -> Measurement | None:
        """The strongest Square below :data:`SQUARE_MIN_QUERIES` queries, where no full-budget attack that goes
        around gradients ran (the only gradient-free evidence there is)."""
        weak = [m for m in self.measurements if m.sees_defense and m.queries is not None and not m.settles_masking]
        if weak and (self.gradient_only or self.worst in weak):     # the only gradient-free evidence, or the worst case
            return min(weak, key=lambda m: m.acc)
        return None

    @property
    def status_text(self) -> str:
        """The status as printed: "robust under gradient attacks only (an upper bound)" when a (partly) robust
        verdict rests on gradient attacks alone, "(upper bound: Square at 200 queries only)" when the only
        gradient-free attack was short."""
        text = self.status.value.upper() if self.status is Status.SUSPECT else self.status.value
        weak = self.weak_square
        if self.status in (Status.ROBUST, Status.PARTLY) and (self.gradient_only or weak):
            text += (f" (upper bound: Square at {weak.queries} queries only)" if weak else
                     " under gradient attacks only (an upper bound)")
        return text

    def __str__(self) -> str:
        lo, hi = self.worst.interval
        head = (f"{self.name}: {self.status_text} at eps {self.eps_text}. Clean {self.clean}; worst case "
                f"{self.worst} ({self.worst.attack}; 95% interval {lo:.1f}-{hi:.1f})")
        weak = self.weak_square
        short = (f" (Square ran with {weak.queries} queries only, under the {SQUARE_MIN_QUERIES} it takes to settle "
                 f"masking)") if weak else ""
        if self.status is Status.SUSPECT:
            return (head + f"; these checks failed: {self._failed_text}, the signature of gradient "
                    f"masking, and no gradient-free attack or BPDA was run at a full budget{short}: "
                    f"{self.worst.acc:.1f}% is an upper bound.")
        parts = [head]
        if self.failed_checks and self.settled_by is None:      # NOT_ROBUST already: its worst case is low
            parts.append(f"; these checks failed: {self._failed_text}, and no full-budget attack that "
                         f"goes around gradients ran{short}, but the worst case is already below the floor")
        elif self.failed_checks:
            by = self.settled_by
            decided = ("and it is the worst case" if by.attack == self.worst.attack else
                       f"and the worst case, {self.worst.attack} {self.worst}, is "
                       + ("as low" if by.acc == self.worst.acc else "lower still"))
            how = ("includes Square, which needs no gradient" if "autoattack" in by.attack else
                   "replaces the defense's gradient" if "bpda" in by.attack else "needs no gradient")
            parts.append(f"; these checks failed: {self._failed_text}, but {by.attack} {by}, which "
                         f"{how}, already ran, {decided}")
        if self.status in (Status.ROBUST, Status.PARTLY) and self.gradient_only:
            parts.append(f"; no gradient-free attack or BPDA ran at a full budget{short}, so this is an upper bound "
                         f"that Square with {SQUARE_MIN_QUERIES}+ queries, or AutoAttack, would confirm or lower")
        elif self.status in (Status.ROBUST, Status.PARTLY) and weak is not None:
            parts.append(f"; its worst case comes from a {weak.queries}-query Square, under the {SQUARE_MIN_QUERIES} "
                         f"it takes to trust a gradient-free number: a longer one may go lower, so it is an upper bound")
        elif self.status in (Status.NOT_ROBUST, Status.OBLIVIOUS_ONLY) and self.worst.acc >= self.floor:
            parts.append(f"; its interval reaches below the {self.floor:.0f}% floor of a robustness claim at this n")
        if self.status is Status.OBLIVIOUS_ONLY:
            parts.append(f"; an attacker who ignores the defense leaves {self.oblivious}, one who sees it wins: "
                         f"never report the oblivious number alone")
        elif self.oblivious is not None and self.oblivious.acc > self.worst.acc and not tie(self.oblivious, self.worst):
            parts.append(f"; the oblivious number, {self.oblivious}, overstates it by "
                         f"{self.oblivious.acc - self.worst.acc:.1f} points")
        return "".join(parts) + "."


def words(robust_floor: float = 10.0, robust_share: float = 0.75, used: Iterable[Verdict] | None = None) -> str:
    """What each verdict word means, with :func:`judge`'s thresholds (its defaults unless given): the lines a
    notebook prints before its first verdict, so the words are defined where they are used. ``used``: only the
    words these verdicts print (and the tie, which every ranking uses)."""
    vs = None if used is None else list(used)
    show = lambda status: vs is None or any(v.status is status for v in vs)
    upper = vs is None or any(v.status in (Status.ROBUST, Status.PARTLY) and (v.gradient_only or v.weak_square)
                              for v in vs)
    lines = [
        "How to read a verdict (featlab.verdicts.judge; 'worst case': the lowest accuracy over the attacks that see "
        "the whole model, each with its 95% Wilson interval):"]
    lines += [f"  {Status.ROBUST.value}: the whole interval of the worst case lies above {100 * robust_share:.0f}% of "
              "the clean accuracy;"] * show(Status.ROBUST)
    lines += [f"  {Status.PARTLY.value}: the whole interval lies above {robust_floor:g}% (about chance for ten "
              f"classes), but not above {100 * robust_share:.0f}% of clean;"] * show(Status.PARTLY)
    lines += [f"  {Status.NOT_ROBUST.value}: the interval reaches below {robust_floor:g}%;"] * show(Status.NOT_ROBUST)
    lines += [f"  {Status.OBLIVIOUS_ONLY.value}: the attacker who ignores the defense leaves it above "
              f"{robust_floor:g}%, the one who sees it does not;"] * show(Status.OBLIVIOUS_ONLY)
    lines += [f"  {Status.SUSPECT.value.upper()}: a check of the evaluation failed (a sign that gradients mislead the "
              f"attacks) and no attack that goes around gradients (Square with at least {SQUARE_MIN_QUERIES:,} "
              "queries, AutoAttack, BPDA) ran: the worst case is an upper bound;"] * show(Status.SUSPECT)
    lines += ["  'under gradient attacks only (an upper bound)' or '(upper bound: ...)' after a word: no attack that goes "
              "around gradients ran at a full budget, so the number is an upper bound even though every check passed;"] * upper
    lines += ["  a tie: two numbers whose gap lies within the binomial noise of their n (the 95% interval of the "
              "difference holds 0), or is one image; in a ranking a place holds its best model and every model tied "
              "with it."]
    return "\n".join(lines)


def judge(name: str, clean: Measurement, measurements: Iterable[Measurement], checks: Sequence[Mapping[str, Any]] = (),
          eps_text: str = "", robust_floor: float = 10.0, robust_share: float = 0.75) -> Verdict:
    """The verdict on one defense at one eps.

    Args:
        clean: the clean accuracy and its n.
        measurements: one per attack or threat model; "oblivious" ones never decide, the rest are the
            attacks that see the defense.
        checks: the checklist's checks (dicts with "passed" and "check") of these measurements.
        robust_floor: a worst case whose 95% interval (:attr:`Measurement.interval`) reaches below this many
            percent is NOT_ROBUST (or OBLIVIOUS_ONLY): a claim of robustness needs the whole interval above it.
        robust_share: ROBUST keeps at least this share of the clean accuracy under the worst case, the whole
            interval above it; less is PARTLY robust. Relative to clean, so a weak model (27% clean, 18%
            attacked) is not called robust for losing few points.
    """
    ms = tuple(measurements)
    seeing = [m for m in ms if m.sees_defense]
    if not seeing:
        raise ValueError("measurements: give at least one attack that sees the defense (not only 'oblivious')")
    # ties in accuracy go to the larger n, then to an attack other than one-step FGSM (a PGD that reaches the same
    # number is the one that decided it: FGSM is the weak attack that the checklist compares others with)
    worst = min(seeing, key=lambda m: (m.acc, -m.n, m.attack.split()[-1].startswith("fgsm")))
    obl = [m for m in ms if not m.sees_defense]
    oblivious = max(obl, key=lambda m: m.acc) if obl else None
    failed = tuple(str(c["check"]) for c in checks if not c["passed"])
    settlers = [m for m in seeing if m.settles_masking]
    settled_by = min(settlers, key=lambda m: m.acc) if failed and settlers else None
    lo = worst.interval[0]
    if failed and settled_by is None and lo >= robust_floor:
        status = Status.SUSPECT
    elif lo < robust_floor:
        status = (Status.OBLIVIOUS_ONLY if oblivious is not None and oblivious.interval[0] >= robust_floor
                  and not tie(oblivious, worst) else Status.NOT_ROBUST)
    elif lo < robust_share * clean.acc:
        status = Status.PARTLY
    else:
        status = Status.ROBUST
    return Verdict(name, status, clean, worst, eps_text, oblivious, failed, settled_by, ms, float(robust_floor))


def on_images(verdict: Verdict, n: int) -> Verdict:
    """``verdict`` judged again from its measurements on exactly ``n`` images (the attacks that ran on one shared
    subset, such as AutoAttack, Square and PGD on the first ``n``), its clean accuracy and failed checks kept: a
    ranking of such verdicts compares every model on the same images and the same attacks. Unchanged where no
    measurement that sees the defense has that n."""
    check_number("n", n, low=1, integer=True)
    same = [m for m in verdict.measurements if m.n == n]
    if not any(m.sees_defense for m in same):
        return verdict
    return judge(verdict.name, verdict.clean, same, [{"check": c, "passed": False} for c in verdict.failed_checks],
                 verdict.eps_text, robust_floor=verdict.floor)


def rank(verdicts: Iterable[Verdict]) -> list[list[Verdict]]:
    """Defenses ranked by their worst case, best first. A place holds the best defense not yet placed and every
    defense within binomial noise of it (:func:`tie`); the first one below that noise opens the next place. Ties are
    not chained: 38% and 10% never share a place through 28% and 18% between them (a defense may still tie the last
    one of the place above; it does not tie that place's first)."""
    groups: list[list[Verdict]] = []
    for v in sorted(verdicts, key=lambda v: -v.worst.acc):
        if groups and tie(groups[-1][0].worst, v.worst):
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def report(judged: Iterable[Verdict], checks: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
           statuses: bool = True) -> str:
    """The verdicts as a ranked table (by the worst case; a tie within binomial noise shares a place) with clean,
    oblivious and worst case, each with its n, the attack that decided and the status; then only the failed checks,
    each with what its failure changes (nothing where the worst case is below the floor already; settled by the
    attack that goes around gradients; or not settled, an upper bound); then, once per failed check id in
    ``checks`` (defense name -> the checklist's checks), why it points at gradient masking. Without ``checks`` and
    with no failed check in the verdicts, the table alone (no checklist ran, so none "passed"). ``statuses=False``
    leaves out the verdict column (a screen whose attacks are too few to call anything robust)."""
    from .checklist import REGISTRY_OF_CHECKS
    vs = list(judged)
    w = max(len(v.name) for v in vs)
    obl = any(v.oblivious is not None for v in vs)          # an oblivious column only where an attacker ignored a defense
    lines = [(f"{'':4s}{'defense':{w}s} {'clean':>14s} " + (f"{'oblivious':>14s} " if obl else "")
              + f"{'worst case':>14s}  {'by':21s}" + (" verdict" if statuses else "")).rstrip()]
    for place, group in enumerate(rank(vs), 1):
        for v in group:
            lines.append((f"{place:2d}. {v.name:{w}s} {str(v.clean):>14s} " + (f"{str(v.oblivious or '-'):>14s} " if obl
                                                                             else "")
                          + f"{str(v.worst):>14s}  {v.worst.attack:21s}" + (f" {v.status_text}" if statuses else "")).rstrip())
    failed = [v for v in vs if v.failed_checks]
    if checks is None and not failed:          # no checklist ran: say nothing about checks
        return "\n".join(lines)
    if not failed:
        return "\n".join(lines + ["\nEvery check passed."])
    # the failed checks, grouped by what they change; defenses with the same failed checks share a line
    groups: dict[str, dict[tuple[tuple[str, ...], str], list[str]]] = {}
    for v in failed:
        by, worst, detail = v.settled_by, v.worst, ""
        if v.status in (Status.NOT_ROBUST, Status.OBLIVIOUS_ONLY):
            what = "change no verdict (the worst case is below the robustness floor already; a stronger attack only lowers it)"
        elif by is None:
            what = "not settled: the worst case is an upper bound"
        else:
            what = "settled by an attack that goes around the gradient"
            detail = (f" -> {by.attack} {by} ran" + ("" if by.attack == worst.attack else
                                                     f"; the worst case, {worst.attack} {worst}, is lower still")
                      + ("; that Square is short, so the worst case is itself an upper bound" if v.weak_square is not None
                         else ""))
        groups.setdefault(what, {}).setdefault((tuple(v.failed_checks), detail), []).append(v.name)
    lines.append("\nFailed checks only, by what they change:")
    for what, by_checks in groups.items():
        lines.append(f"  {what}:")
        lines += [f"    {', '.join(names)}: " + ", ".join(f"'{c}'" for c in failed_checks) + detail
                  for (failed_checks, detail), names in by_checks.items()]
    ids = dict.fromkeys(c["id"] for v in failed for c in (checks or {}).get(v.name, ())
                        if not c["passed"] and c.get("id") in REGISTRY_OF_CHECKS)
    if ids:
        lines.append("  why each points at masking:")
        lines += [f"    {cid}: {REGISTRY_OF_CHECKS[cid].why}" for cid in ids]
    return "\n".join(lines)


def ranking_text(verdicts: Iterable[Verdict]) -> str:
    """The ranking as lines: "1. A 91.2% (n=500) = B 90.8% (n=500)  (a tie within binomial noise)". A SUSPECT
    verdict's place is marked as an upper bound: its worst case may only fall, so it may belong lower."""
    lines = []
    for i, group in enumerate(rank(verdicts), 1):
        names = " = ".join(f"{v.name} {v.worst} ({v.worst.attack}"
                           + ("; SUSPECT: an upper bound, its place may be lower" if v.status is Status.SUSPECT else "")
                           + ")" for v in group)
        lines.append(f"{i}. {names}" + ("  (tied: within binomial noise)" if len(group) > 1 else ""))
    return "\n".join(lines)
