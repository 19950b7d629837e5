"""Collect ``results/*.json`` records and render ``results/RESULTS.md``.

Every row of the table is one record written by ``featlab eval`` / ``featlab probe`` /
``featlab.evaluate.write_result``; the table shows its numbers with the command that made it,
the commit, the device and the wall time, so each row can be reproduced.

    $ featlab results                     # results/*.json -> results/RESULTS.md
    >>> records = featlab.results.load("results")
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .evaluate import RESULT_KEYS

THREAT_ORDER = {"white-box": 0, "none": 1, "oblivious": 2, "end-to-end": 3, "bpda": 4}


def load(results_dir: str | os.PathLike = "results") -> list[dict[str, Any]]:
    """All result records (a file may hold one record or a list); records lacking a required
    key (e.g. the probe's distortion curves) are skipped. Each record gets ``_file``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results_dir: {root} is not a folder (featlab eval writes results/*.json)")
    out = []
    for path in sorted(root.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results_dir: {path} is not valid JSON ({e})") from None
        for rec in data if isinstance(data, list) else [data]:
            if isinstance(rec, dict) and all(k in rec for k in RESULT_KEYS):
                out.append({**rec, "_file": path.name})
    return out


def _fmt_eps(eps: float, dataset: str, norm: str) -> str:
    if dataset.startswith("cifar") and norm == "linf" and eps > 0:
        return f"{eps * 255:.3g}/255"
    return f"{eps:g}"


def _sanity(rec: dict[str, Any]) -> str:
    s = rec.get("sanity")
    if not s:
        return "not run"
    if s["passed"]:
        return "pass"
    return "FAIL: " + "; ".join(c["check"] for c in s["checks"] if not c["passed"])


def _run_name(rec: dict[str, Any], default: str | None = None) -> str:
    """The run folder a record's model was trained into: ``--out`` of its train command (else its first runs/...)."""
    words = str(rec.get("train_command", "")).split()
    if "--out" in words[:-1]:
        return Path(words[words.index("--out") + 1]).name
    return next((w.split("/")[-1] for w in words if w.startswith("runs/")),
                f"{rec['model']} {rec['method']}" if default is None else default)


def _sanity_of(recs: list[dict[str, Any]]) -> str:
    checked = [r for r in recs if r.get("sanity")]
    if any(not r["sanity"]["passed"] for r in checked):
        return "FAIL"
    if not checked:
        return "not run"
    return "pass" if len(checked) == len(recs) else f"pass ({len(checked)} of {len(recs)} records checked)"


def worst_case(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained run, norm and eps: the lowest robust accuracy any attack that sees the whole defense
    reached (white-box, end-to-end, BPDA; not "oblivious", which is listed but does not count, nor the
    bare classifier "none").

    That minimum is the number to report (an evaluation is only as strong as its best attack). Records
    may use different test images (their ``n``); a failed checklist on any of them is carried along."""
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["threat_model"] == "none":
            continue
        groups[(r["dataset"], _run_name(r), r["norm"], round(float(r["eps"]), 6))].append(r)
    out = []
    for (dataset, run, norm, eps), recs in sorted(groups.items()):
        seeing = [r for r in recs if r["threat_model"] != "oblivious"]
        if not seeing:
            continue
        worst = min(seeing, key=lambda r: (r["robust_acc"], -r["n_eval"]))
        by_attack: dict[str, dict[str, Any]] = {}
        for r in sorted(recs, key=lambda r: r["n_eval"]):       # the largest evaluation per attack wins
            by_attack[r["attack"] if r["threat_model"] == "white-box" else r["threat_model"]] = r
        out.append({"dataset": dataset, "run": run, "norm": norm, "eps": eps, "worst": worst["robust_acc"],
                    "worst_attack": worst["attack"] if worst["threat_model"] == "white-box" else worst["threat_model"],
                    "worst_n": worst["n_eval"],
                    "attacks": {k: (v["robust_acc"], v["n_eval"]) for k, v in by_attack.items()},
                    "sanity": _sanity_of(recs)})
    return out


def worst_case_table(records: list[dict[str, Any]], dataset: str | None = None) -> str:
    """:func:`worst_case` as a Markdown table (only ``dataset``'s runs if given)."""
    lines = ["| dataset | run | norm | eps | worst | by | n | every attack (n) | sanity |", "|---|---|---|---|---|---|---|---|---|"]
    for w in worst_case(records):
        if dataset is not None and w["dataset"] != dataset:
            continue
        every = ", ".join(f"{a} {acc:.1f} ({n})" for a, (acc, n) in sorted(w["attacks"].items()))
        lines.append(f"| {w['dataset']} | {w['run']} | {w['norm']} | {_fmt_eps(w['eps'], w['dataset'], w['norm'])} "
                     f"| **{w['worst']:.2f}** | {w['worst_attack']} | {w['worst_n']} | {every} | {w['sanity']} |")
    return "\n".join(lines)


def render(records: list[dict[str, Any]], title: str = "featlab results") -> str:
    """The Markdown page: one table per (dataset, model, method) and a command list per table."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:      # one table per trained run (two runs of one method stay apart)
        groups[(r["dataset"], r["model"], r["method"], str(r.get("train_command", "")))].append(r)
    lines = [f"# {title}", "",
             "Generated by `featlab results` from `results/*.json`; do not edit by hand. Accuracies in percent, "
             "eps in pixel units ([0, 1] images). `sanity` is the evaluation checklist "
             "(`featlab.evaluate.checklist`); a FAIL means the number may be inflated by gradient masking.", "",
             "## Summary: the worst case per run and eps", "",
             "The lowest robust accuracy that any attack seeing the whole defense reached (white-box, end-to-end, "
             "BPDA), with every attack's number (and its n) beside it; an oblivious number is listed but never counts. Attacks run on n test images each; rows "
             "with different n use different (stratified) images.", "",
             worst_case_table(records), ""]
    for (dataset, model, method, _), recs in sorted(groups.items()):
        recs.sort(key=lambda r: (THREAT_ORDER.get(r["threat_model"], 9), r["norm"], r["attack"], r["eps"]))
        first = recs[0]
        run = _run_name(first, default="")
        lines += [f"## {dataset} · {model} · {method}" + (f" · {run}" if run else ""), "",
                  f"Trained: `{first.get('train_command', 'n/a')}` ({first.get('epochs')} epochs, "
                  f"{first.get('train_wall_s', 'n/a')} s on {first.get('train_device', 'n/a')})", "",
                  "| threat model | attack | norm | eps | n | clean | robust | sanity | eval wall s | device | commit | cmd | record |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        cmds: list[str] = []
        for r in recs:
            if r["command"] not in cmds:
                cmds.append(r["command"])
            lines.append(f"| {r['threat_model']} | {r['attack']} | {r['norm']} | {_fmt_eps(r['eps'], dataset, r['norm'])} "
                         f"| {r['n_eval']} | {r['clean_acc']:.2f} | {r['robust_acc']:.2f} | {_sanity(r)} "
                         f"| {r['wall_s']} | {r['device']} | {str(r['commit'])[:10]} | [{cmds.index(r['command']) + 1}] "
                         f"| {r.get('_file', '')} |")
        lines += [""] + [f"[{i + 1}] `{c}`" for i, c in enumerate(cmds)] + [""]
    return "\n".join(lines) + "\n"


def write_markdown(results_dir: str | os.PathLike = "results", out: str | os.PathLike | None = None) -> Path:
    """Render ``results_dir/*.json`` into ``out`` (default ``results_dir/RESULTS.md``), atomically."""
    records = load(results_dir)
    if not records:
        raise ValueError(f"results_dir: no result records in {results_dir} (run featlab eval first)")
    path = Path(out) if out is not None else Path(results_dir) / "RESULTS.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(records))
    os.replace(tmp, path)
    return path


# Published robust accuracies to compare with (percent). MNIST rows: AutoAttack's MNIST Linf 0.3
# table (Croce & Hein 2020, arXiv 2003.01690, and its leaderboard in the fra31/auto-attack
# repository, which adds later entries such as Gowal et al. 2020): clean / as reported by the
# authors / under AutoAttack. CIFAR-10 rows: RobustBench (AutoAttack).
PUBLISHED: list[dict[str, Any]] = [
    {"dataset": "mnist", "eps": 0.3, "defense": "PGD-AT (Madry et al. 2018)", "clean": 98.53, "reported": 89.62,
     "autoattack": 88.50, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "mnist", "eps": 0.3, "defense": "TRADES (Zhang et al. 2019)", "clean": 99.48, "reported": 95.60,
     "autoattack": 92.81, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "mnist", "eps": 0.3, "defense": "Fast-AT (Wong et al. 2020)", "clean": 98.50, "reported": 88.77,
     "autoattack": 82.93, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "mnist", "eps": 0.3, "defense": "Gowal et al. 2020 (best listed)", "clean": 99.26, "reported": 96.38,
     "autoattack": 96.34, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "cifar10", "eps": 8 / 255, "defense": "Fast-AT PreActResNet-18", "clean": 83.34, "reported": None,
     "autoattack": 43.21, "source": "RobustBench"},
    {"dataset": "cifar10", "eps": 8 / 255, "defense": "TRADES WRN-34-10", "clean": 84.92, "reported": None,
     "autoattack": 53.08, "source": "RobustBench"},
]


def verdict(name: str, clean: float, robust: dict[str, float], checks: list[dict[str, Any]], eps: float,
            n: int | None = None) -> str:
    """A plain-language verdict on one defense.

    Args:
        robust: robust accuracy per attack or threat model at ``eps`` (e.g. {"pgd40": 95.1,
            "autoattack": 93.0} or {"oblivious": 28.0, "end-to-end": 3.0, "bpda": 11.0}).
        checks: the checklist of :func:`featlab.evaluate.checklist` for this defense.
    """
    failed = [c["check"] for c in checks if not c["passed"]]
    where = f" on {n} test images" if n else ""
    if failed:
        return (f"{name}: SUSPECT. The checklist failed ({'; '.join(failed)}), the signature of gradient masking; "
                f"its robust accuracy is an upper bound until a stronger or gradient-free attack settles it.")
    white = {k: v for k, v in robust.items() if k not in ("oblivious", "none")}
    if not white:
        raise ValueError("robust: give at least one white-box attack or threat model (not only 'oblivious')")
    worst_name = min(white, key=white.get)
    worst = white[worst_name]
    passed = "; the checks pass" if checks else " (no checks were run: treat it as unverified)"
    text = f"{name}: clean {clean:.1f}%, {worst:.1f}% under its strongest attack ({worst_name}) at eps {eps:g}{where}."
    if "oblivious" in robust and robust["oblivious"] > worst + 10:
        text += (f" It looks robust only to an attacker who ignores the defense (oblivious {robust['oblivious']:.1f}%); "
                 f"an attacker who sees the whole pipeline wins: do not report the oblivious number alone.")
    elif worst < 10:
        text += " Not robust at this eps."
    elif worst < clean - 30:
        text += f" Partly robust: the attack takes away {clean - worst:.0f} points{passed}."
    else:
        text += f" Robust at this eps as far as these attacks can tell{passed}."
    return text
