"""Notebook 05's taught cell (three checks of the evaluation checklist, written in plain Python) against
featlab.checklist: on thousands of random evaluations, the same checks fail, at the same eps. If the library's rule
or the cell's drifts (the slack, which attacks count as iterative or as gradient-only, eps 0), this fails."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from featlab.checklist import checklist
from featlab.nbtools import taught

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_honest_evaluation.ipynb"
ATTACKS = ["fgsm", "pgd10", "pgd40x5", "pgd20@0.01", "apgd", "apgd-ce", "autoattack", "square200", "square"]


@pytest.fixture(scope="module")
def cell():
    return taught(NOTEBOOK)


def _random_rows(rng):
    eps_list = sorted(rng.sample([0.0, 0.05, 0.1, 0.2, 0.3], rng.randint(1, 4)))
    attacks = rng.sample(ATTACKS, rng.randint(1, 5))
    rows = []
    for a in attacks:
        acc = rng.uniform(0, 100)
        for e in eps_list:
            acc = min(100.0, max(0.0, acc + rng.choice([-30, -5, -1, 0, 0.5, 2, 20])))   # mostly falling, not always
            rows.append({"attack": a, "eps": e, "robust_acc": round(acc, 1)})
    return rows


def _library(rows, n):
    """Per check id: {check name: (passed, eps)}; the names carry the attack for per-attack checks."""
    out = {}
    for c in checklist(rows, n=n):
        out.setdefault(c["id"], {})[c["check"]] = (c["passed"], sorted(c["eps"] or []))
    return out


def test_taught_checks_fail_where_featlab_fails(cell):
    rng = random.Random(0)
    decided = {"monotone": 0, "iterative-vs-fgsm": 0, "gradient-free": 0}
    failed = dict.fromkeys(decided, 0)
    for _ in range(3000):
        rows, n = _random_rows(rng), rng.choice([30, 100, 1000])
        tol = max(1.0, 100 / n)
        table = cell["by_attack"](rows)
        lib = _library(rows, n)

        mono = cell["monotone_failures"](table, tol)
        for name, (passed, eps) in lib.get("monotone", {}).items():
            attack = name.split("(")[1].rstrip(")")
            mine = [f for f in mono if f[0] == attack]
            assert passed == (not mine), (rows, name)
            assert eps == sorted({e for f in mine for e in f[1:]}), (rows, name)
        assert {f[0] for f in mono} <= {n.split("(")[1].rstrip(")") for n, v in lib.get("monotone", {}).items()}

        fg = cell["fgsm_failures"](table, tol)
        for name, (passed, eps) in lib.get("iterative-vs-fgsm", {}).items():
            assert passed == (not fg) and eps == sorted({e for _, e in fg}), (rows, name)
        if not lib.get("iterative-vs-fgsm"):
            assert not fg, rows

        gf = cell["gradient_free_failures"](table, tol)
        for name, (passed, eps) in lib.get("gradient-free", {}).items():
            square = name.split()[1]
            mine = [f for f in gf if f[0] == square]
            assert passed == (not mine) and eps == sorted({e for _, e in mine}), (rows, name)
        assert {f[0] for f in gf} <= {n.split()[1] for n in lib.get("gradient-free", {})}

        for cid in decided:
            decided[cid] += bool(lib.get(cid))
            failed[cid] += any(not p for p, _ in lib.get(cid, {}).values())
    # the random evaluations exercise every check both ways
    assert all(decided[c] > 100 and 20 < failed[c] < decided[c] - 20 for c in decided), (decided, failed)


def test_the_planted_defense_fails_the_same_checks_in_the_notebook_cell(cell):
    # PGD stuck high (a hidden gradient), FGSM a little lower, Square far lower: the pattern of section 4
    rows = [{"attack": a, "eps": e, "robust_acc": v} for a, e, v in
            [("fgsm", 0.1, 90.0), ("fgsm", 0.3, 85.0), ("pgd20", 0.1, 95.0), ("pgd20", 0.3, 97.0),
             ("square200", 0.3, 5.0)]]
    table = cell["by_attack"](rows)
    assert cell["monotone_failures"](table, 1.0) == [("pgd20", 0.1, 0.3)]
    assert sorted(cell["fgsm_failures"](table, 1.0)) == [("pgd20", 0.1), ("pgd20", 0.3)]
    assert cell["gradient_free_failures"](table, 1.0) == [("square200", 0.3)]
