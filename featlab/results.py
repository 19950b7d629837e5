"""Result records: their schema, writing them (``results/<name>.json``), reading them back, and
rendering ``results/RESULTS.md``.

Every row of the table is one record written by ``featlab eval`` / ``featlab probe`` /
:func:`write_result`; the table shows its numbers with the command that made it,
the commit, the device and the wall time, so each row can be reproduced.

    $ featlab results                     # results/*.json -> results/RESULTS.md
    >>> records = featlab.results.load("results")
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from . import data, distributed, pretrained, verdicts
from ._utils import get_device, git_commit
from .checkpoint import atomic_write_text
from .checklist import checklist, page

#: what every record holds (accuracies in percent); :func:`write_result` refuses a record without them
RESULT_KEYS = ("dataset", "model", "method", "threat_model", "norm", "eps", "attack", "n_eval", "clean_acc",
               "robust_acc", "epochs", "seed", "command", "commit", "device", "wall_s", "date")


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
    return atomic_write_text(path, json.dumps(out[0] if isinstance(record, dict) else out, indent=2, sort_keys=True) + "\n")



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
    if dataset in data.DATASETS and norm in ("linf", "l2"):
        return data.format_eps(eps, dataset, norm)
    return f"{eps:g}"


def _sanity(rec: dict[str, Any]) -> str:
    s = rec.get("sanity")
    if not s:
        return "not run"
    if s["passed"]:
        return "pass"
    return "FAIL: " + "; ".join(c["check"] for c in s["checks"] if not c["passed"])


def _run_name(rec: dict[str, Any], default: str | None = None) -> str:
    """The run folder a record's model was trained into (its ``run`` field), else ``default`` (model and method)."""
    name = rec.get("run") or (f"{rec['model']} {rec['method']}" if default is None else default)
    if rec.get("trained_for"):        # a denoiser in front of another classifier (transfer): its own row
        name += f" on {str(rec['classifier_run']).split(':')[-1].split('/')[-1]}"
    return name


def _model_key(rec: dict[str, Any]) -> str:
    """What was evaluated: one trained model per train command, and for a denoiser or a control also the
    classifier behind it (a denoiser moved in front of another classifier is another defense)."""
    key = str(rec.get("train_command") or f"{rec['model']} {rec['method']}")
    return key + (f" | {rec['classifier_run']}" if rec.get("classifier_run") else "")


SEEING = ("white-box", "end-to-end", "bpda")   # threat models whose attacker sees the whole defense
LARGE_EPS_ROLE = "checklist large-eps point"   # a record's role: the checklist's point, left out of worst cases


def _eps_key(eps: float) -> str:
    return f"{float(eps):.4g}"          # 8/255 stored as 0.0313725 or 0.03137254... is one eps


def _label(rec: dict[str, Any]) -> str:
    """An attack's name in the summary: the attack for white-box, else the threat model and the attack."""
    if rec["threat_model"] == "white-box":
        return rec["attack"]
    return f"{rec['threat_model']} {str(rec['attack']).split()[0]}"


def _is_sanity_point(rec: dict[str, Any]) -> bool:
    """The checklist's large-eps point (e.g. Linf 1.0, where any image can be drawn), not a robustness number."""
    return rec.get("role") == LARGE_EPS_ROLE


def _keep_lowest(by_attack: dict[str, dict[str, Any]], rec: dict[str, Any]) -> None:
    """Keep ``rec`` under its attack unless a record with a lower robust accuracy is there already."""
    if rec["attack"] not in by_attack or rec["robust_acc"] < by_attack[rec["attack"]]["robust_acc"]:
        by_attack[rec["attack"]] = rec


def _cross_checks(recs: list[dict[str, Any]], eps: float) -> list[str]:
    """The checklist (today's) run again over the white-box records of one model at ``eps`` on the same
    images and weights (same ``n_eval``, ``seed``, ``weights`` and ``precision``), whichever ``featlab
    eval`` calls wrote them: each call checks only its own attacks, so a Square run on its own never meets
    the APGD run it contradicts. Returns the names of the failed checks."""
    same_images: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in recs:
        if r["threat_model"] == "white-box" and _eps_key(r["eps"]) == _eps_key(eps) and not _is_sanity_point(r):
            key = (r["n_eval"], str(r.get("seed", 0)), str(r.get("weights", "")), str(r.get("precision", "fp32")))
            _keep_lowest(same_images[key], r)
    failed: list[str] = []
    for (n, *_), by in sorted(same_images.items()):
        if len(by) < 2:
            continue
        rows = [{"attack": a, "eps": float(eps), "robust_acc": float(r["robust_acc"]), "norm": r["norm"]}
                for a, r in by.items()]
        failed += [c["check"] for c in checklist(rows, n=n) if not c["passed"] and c["check"] not in failed]
    return failed


def _failed_checks(recs: list[dict[str, Any]], eps: float) -> tuple[list[str], bool, bool]:
    """The failed checks at one eps, by name: a record's own failed check counts if its ``eps`` holds this eps,
    or is None (a check about every eps, e.g. missing input gradients). Where no record's own checklist fails
    here, all the attacks on the same images are checked together with today's checklist
    (:func:`_cross_checks`), whichever calls ran them. Returns (names, checked together, any checklist run)."""
    checked = [r for r in recs if r.get("sanity")]
    here = _eps_key(eps)
    failed: list[str] = []
    for r in checked:
        for c in r["sanity"].get("checks", []):
            # a failed check's "eps": the eps its failures concern; None: every eps (missing input gradients)
            if not c["passed"] and (c.get("eps") is None or any(_eps_key(e) == here for e in c["eps"])):
                failed += [c["check"]] if c["check"] not in failed else []
        if not r["sanity"]["passed"] and not r["sanity"].get("checks") and "unnamed check" not in failed:
            failed.append("unnamed check")
    if failed:
        return failed, False, True
    cross = _cross_checks(recs, eps)
    return cross, bool(cross), bool(checked or cross)


def _sanity_at(recs: list[dict[str, Any]], eps: float) -> str:
    """:func:`_failed_checks` as the summary's text: "FAIL: <checks>" (a record's own checklist), "FAIL (checked
    together: <checks>)", "pass", "pass (k of n records checked)" or "not run"."""
    failed, together, ran = _failed_checks(recs, eps)
    if not ran:
        return "not run"
    if failed:
        return f"FAIL (checked together: {'; '.join(failed)})" if together else "FAIL: " + "; ".join(failed)
    checked = sum(bool(r.get("sanity")) for r in recs)
    return "pass" if checked == len(recs) else f"pass ({checked} of {len(recs)} records checked)"


def worst_case(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained run, norm and eps: the lowest robust accuracy that an attack seeing the whole defense
    reached (threat models white-box, end-to-end, BPDA). Oblivious numbers are listed beside it but never
    count; the bare classifier ("none") and the checklist's large-eps point are left out.

    Per attack, the lowest of its evaluations is kept (they may use different test images: their ``n``),
    and ``worst`` is the lowest of those. ``sanity`` is the checklist's verdict at this eps (the records' own,
    then the attacks of separate calls on the same images checked together: :func:`_sanity_at`); a
    "FAIL" means even the worst case may be an overestimate until a stronger attack settles it, and
    ``failed_checks`` names the failed checks."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["threat_model"] in SEEING + ("oblivious",) and not _is_sanity_point(r):
            # one trained model per train command (the same key as the detailed tables)
            groups[(r["dataset"], _model_key(r), r["norm"], _eps_key(r["eps"]))].append(r)
    out = []
    for (dataset, _, norm, _), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], _run_name(kv[1][0]),
                                                                              kv[0][2], float(kv[0][3]))):
        by_attack: dict[str, dict[str, Any]] = {}
        for r in recs:
            k = _label(r)
            if k not in by_attack or (r["robust_acc"], -r["n_eval"]) < (by_attack[k]["robust_acc"],
                                                                          -by_attack[k]["n_eval"]):
                by_attack[k] = r
        seeing = {k: r for k, r in by_attack.items() if r["threat_model"] in SEEING}
        if not seeing:
            continue
        wk = min(seeing, key=lambda k: (seeing[k]["robust_acc"], -seeing[k]["n_eval"]))
        eps = float(recs[0]["eps"])
        out.append({"dataset": dataset, "run": _run_name(recs[0]), "norm": norm, "eps": eps,
                    "worst": seeing[wk]["robust_acc"], "worst_attack": wk, "worst_n": seeing[wk]["n_eval"],
                    "clean": (seeing[wk]["clean_acc"], seeing[wk]["n_eval"]),
                    "attacks": {k: (r["robust_acc"], r["n_eval"]) for k, r in by_attack.items()},
                    "sanity": _sanity_at([r for r in recs if r["threat_model"] in SEEING], eps),
                    "failed_checks": _failed_checks([r for r in recs if r["threat_model"] in SEEING], eps)[0]})
    return out


def headline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per shipped model (``featlab.pretrained``) at its dataset's eps: clean accuracy, AutoAttack
    (None when not run), the worst case over the attacks that see the defense, each with its n, the
    committed checklist, and the typed :class:`featlab.verdicts.Verdict` built from those numbers.
    A shipped model without a committed evaluation at that eps gets ``verdict`` None."""
    by_run = {(w["dataset"], w["run"], _eps_key(w["eps"])): w for w in worst_case(records) if w["norm"] == "linf"}
    rows = []
    for name, entry in sorted(pretrained.manifest().items(), key=lambda kv: (kv[1]["dataset"], kv[1]["kind"], kv[0])):
        dataset = entry["dataset"]
        eps = data.threat_defaults(dataset)["eps"]
        run = entry.get("run", "")
        w = by_run.get((dataset, run, _eps_key(eps)))
        row: dict[str, Any] = {"name": name, "kind": entry["kind"], "dataset": dataset, "eps": eps, "worst_case": w,
                               "autoattack": None, "verdict": None}
        if w is not None:
            aa = [(acc, n) for a, (acc, n) in w["attacks"].items() if "autoattack" in a]
            row["autoattack"] = min(aa) if aa else None
            failed = [{"check": f"committed checklist: {name}", "passed": False} for name in w["failed_checks"]]
            row["verdict"] = verdicts.judge(name, verdicts.Measurement("clean", float(w["clean"][0]), int(w["clean"][1])),
                                            [verdicts.Measurement(a, float(acc), int(n)) for a, (acc, n) in w["attacks"].items()],
                                            failed, eps_text=_fmt_eps(eps, dataset, "linf"))
        rows.append(row)
    return rows


def default_dir() -> Path:
    """The committed ``results/`` folder beside the package: present in a clone of the repository, absent on
    Colab or in an installed wheel (check ``.is_dir()``)."""
    return Path(__file__).resolve().parent.parent / "results"


def committed_verdicts(results_dir: str | os.PathLike | None = None, dataset: str | None = None,
                       eps: float | None = None) -> dict[str, verdicts.Verdict]:
    """The committed verdict of each shipped model, by its ``featlab.pretrained`` name, read from ``results_dir``
    (default: the ``results/`` folder beside the package, present in a clone and absent on Colab or in a wheel,
    which gives ``{}``). Only ``dataset``'s models if given; ``{}`` when ``eps`` is given and is not the dataset's
    eps, since the committed verdicts are at that eps. A notebook puts these beside its live verdicts."""
    rdir = Path(results_dir) if results_dir is not None else default_dir()
    if not rdir.is_dir():
        return {}
    if dataset is not None and eps is not None and abs(float(eps) - data.threat_defaults(dataset)["eps"]) > 1e-9:
        return {}
    return {r["name"]: r["verdict"] for r in headline(load(rdir))
            if r["verdict"] is not None and (dataset is None or r["dataset"] == dataset)}


def attack_text(name: str) -> str:
    """An attack's key as a reader reads it: "pgd40@0.01" (PGD-40 with a fixed step of 0.01) -> "pgd40 (step 0.01)";
    "worst-case" (the per-image worst over the attacks of one ``featlab eval`` call, :func:`featlab.evaluate.per_example_worst_case`)
    -> "per-image worst of one eval's attacks", so that it does not read as the name of an attack."""
    if name == "worst-case":
        return "per-image worst of one eval's attacks"
    head, _, step = str(name).partition("@")
    return f"{head} (step {step})" if step else str(name)


def headline_table(records: list[dict[str, Any]], dataset: str | None = None) -> str:
    """:func:`headline` as a one-screen Markdown table (only ``dataset``'s models if given)."""
    lines = ["| shipped model | dataset | eps | clean (n) | AutoAttack (n) | worst case (n, attack) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in headline(records):
        if dataset is not None and r["dataset"] != dataset:
            continue
        eps = _fmt_eps(r["eps"], r["dataset"], "linf")
        v = r["verdict"]
        if v is None:
            lines.append(f"| {r['name']} | {r['dataset']} | {eps} | not evaluated | not run | not evaluated | none |")
            continue
        aa = f"{r['autoattack'][0]:.1f} ({r['autoattack'][1]})" if r["autoattack"] else "not run"
        flags = "; ".join(r["worst_case"]["failed_checks"])
        status = v.status_text + (f"; its failed check ({flags}) is settled by {attack_text(v.settled_by.attack)}"
                                  if v.settled_by else "")
        lines.append(f"| {r['name']} | {r['dataset']} | {eps} | {v.clean.acc:.1f} ({v.clean.n}) | {aa} "
                     f"| **{v.worst.acc:.1f}** ({v.worst.n}, {attack_text(v.worst.attack)}) | {status} |")
    return "\n".join(lines)


def worst_case_table(records: list[dict[str, Any]], dataset: str | None = None) -> str:
    """:func:`worst_case` as a Markdown table (only ``dataset``'s runs if given)."""
    lines = ["| dataset | run | norm | eps | worst | by | n | each attack's lowest (n) | sanity at this eps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for w in worst_case(records):
        if dataset is not None and w["dataset"] != dataset:
            continue
        every = ", ".join(f"{a} {acc:.2f} ({n})" for a, (acc, n) in sorted(w["attacks"].items()))
        lines.append(f"| {w['dataset']} | {w['run']} | {w['norm']} | {_fmt_eps(w['eps'], w['dataset'], w['norm'])} "
                     f"| **{w['worst']:.2f}** | {w['worst_attack']} | {w['worst_n']} | {every} | {w['sanity']} |")
    return "\n".join(lines)


def _attack_order(name: str) -> tuple[int, str]:
    order = ("fgsm", "pgd", "apgd", "square", "autoattack", "worst-case")
    return next((i for i, p in reversed(list(enumerate(order))) if name.startswith(p)), len(order)), name


def attack_table(records: list[dict[str, Any]], dataset: str, eps: float, n_eval: int, norm: str = "linf",
                 min_attacks: int = 3) -> str:
    """The classifiers evaluated on the same ``n_eval`` images at ``eps``, one row each, one column per
    attack (white-box records; the checklist's large-eps point left out): the comparison of methods
    with every attack side by side. Runs with fewer than ``min_attacks`` attacks there are left out;
    "worst-case" is the per-image worst over the attacks of one ``featlab eval`` call. The images are
    those of the records' ``seed`` (a run evaluated with two seeds gets a row per seed); an attack
    evaluated twice there shows its lowest number. Returns "" when no run qualifies."""
    runs: dict[tuple[str, Any], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if (r["dataset"] == dataset and r["threat_model"] == "white-box" and r["norm"] == norm
                and r["n_eval"] == n_eval and _eps_key(r["eps"]) == _eps_key(eps) and not _is_sanity_point(r)):
            _keep_lowest(runs[(_model_key(r), r.get("seed", 0))], r)
    runs = {k: v for k, v in runs.items() if len(v) >= min_attacks}
    if not runs:
        return ""
    attacks = sorted({a for v in runs.values() for a in v}, key=_attack_order)
    lines = ["| run | method | epochs | clean | " + " | ".join(attacks) + " | sanity |",
             "|---|---|---|---|" + "---|" * len(attacks) + "---|"]
    seeds: dict[str, set] = defaultdict(set)
    for model_key, seed in runs:
        seeds[model_key].add(seed)
    for (model_key, seed), by in sorted(runs.items(), key=lambda kv: (_run_name(next(iter(kv[1].values()))),
                                                                      str(kv[0][1]))):
        first = next(iter(by.values()))
        cells = [f"{by[a]['robust_acc']:.1f}" if a in by else "" for a in attacks]
        name = _run_name(first) + (f" (seed {seed})" if len(seeds[model_key]) > 1 else "")
        lines.append(f"| {name} | {first['method']} | {first.get('epochs', '')} | {first['clean_acc']:.1f} | "
                     + " | ".join(cells) + f" | {_sanity_at(list(by.values()), eps)} |")
    return "\n".join(lines)


#: one-factor ablations, each row a run folder; every row is trained at one budget and evaluated on the same n test
#: images (issue 32: which factor decides AFD's robustness on CIFAR-10)
#: per dataset: the AFD ablation's runs on the same ``n`` test images, each (label, run, role). The role says how
#: :func:`ablation_findings` reads a row: "reference" (the first), "change" (the reference with one thing changed),
#: "control" (PGD-AT of the reference's budget) or "budget control" (PGD-AT of a changed budget)
ABLATIONS: dict[str, dict[str, Any]] = {
    "cifar10": {"n": 500, "rows": [
        ("AFD, reference recipe: PGD-5 training attack, unit-length embedding, rates E+C 0.1 / E 0.5 / D 0.1",
         "cifar_airnet_l2_afd_pgd5", "reference"),
        ("AFD, one change: the training attack one step (FGSM from a random start, step 10/255)",
         "cifar_airnet_l2_afd_fgsm", "change"),
        ("AFD, one change: the game off (no encoder step against the discriminator)", "cifar_airnet_l2_afd_pgd5_nogame",
         "change"),
        ("AFD, one change: the raw embedding (cifar_airnet's 192-d max-pooled feature, not unit length)",
         "cifar_airnet_afd_pgd5_raw", "change"),
        ("AFD, one change: the earlier CIFAR-10 rates (E+C 0.4, E 0.04, D 0.1)", "cifar_airnet_l2_afd_pgd5_oldrates",
         "change"),
        ("PGD-AT, the same PGD-5 attack and epochs (plain embedding, weight decay 5e-4)", "cifar_airnet_pgd5_at",
         "control"),
        ("PGD-AT on AFD's own network and E+C optimiser, only the objective differing from the first row (unit-length "
         "embedding; SGD 0.1, momentum 0.9 without Nesterov, weight decay 1e-4)", "cifar_airnet_l2_pgd5_at", "control"),
        ("AFD, one change: twice the budget (12 epochs instead of 6, the same one-cycle schedule stretched)",
         "cifar_airnet_l2_afd_pgd5_e12", "change"),
        ("PGD-AT on AFD's own network and E+C optimiser, 12 epochs (the control of the row above)",
         "cifar_airnet_l2_pgd5_at_e12", "budget control")]},
}


def ablation_rows(records: list[dict[str, Any]], dataset: str = "cifar10", eps: float | None = None) -> list[dict[str, Any]]:
    """:data:`ABLATIONS` of ``dataset`` at its eps (default the dataset's), one dict per row: ``label``, ``run``, ``role``, ``n``
    and, from its white-box records on those n test images (None where there is none yet), ``clean``, ``pgd20``,
    ``autoattack``, the ``worst`` with its ``worst_attack``, and the checklist's ``sanity``. [] without an ablation."""
    if dataset not in ABLATIONS:
        return []
    spec = ABLATIONS[dataset]
    eps = float(data.threat_defaults(dataset)["eps"] if eps is None else eps)
    out = []
    for label, run, role in spec["rows"]:
        by: dict[str, dict[str, Any]] = {}
        for r in records:
            if (r.get("run") == run and r["dataset"] == dataset and r["threat_model"] == "white-box"
                    and r["n_eval"] == spec["n"] and _eps_key(r["eps"]) == _eps_key(eps) and not _is_sanity_point(r)):
                _keep_lowest(by, r)
        worst = min(by.values(), key=lambda r: r["robust_acc"]) if by else None
        out.append({"label": label, "run": run, "role": role, "n": spec["n"], "eps": eps,
                    "clean": next(iter(by.values()))["clean_acc"] if by else None,
                    "pgd20": by["pgd20"]["robust_acc"] if "pgd20" in by else None,
                    "autoattack": by["autoattack"]["robust_acc"] if "autoattack" in by else None,
                    "worst": worst["robust_acc"] if worst else None, "worst_attack": worst["attack"] if worst else None,
                    "sanity": _sanity_at(list(by.values()), eps) if by else None})
    return out


def ablation_table(records: list[dict[str, Any]], dataset: str = "cifar10", eps: float | None = None) -> str:
    """:func:`ablation_rows` as a Markdown table ("not run" where a row has no record); "" without an ablation."""
    rows = ablation_rows(records, dataset, eps)
    if not rows:
        return ""
    f = lambda v: "not run" if v is None else f"{v:.1f}"      # noqa: E731
    lines = [f"| change | run | clean | PGD-20 | AutoAttack | worst (by) | sanity (n = {rows[0]['n']} each) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = f"**{r['worst']:.1f}** ({r['worst_attack']})" if r["worst"] is not None else "-"
        lines.append(f"| {r['label']} | {r['run']} | {f(r['clean'])} | {f(r['pgd20'])} | {f(r['autoattack'])} | "
                     f"{worst} | {r['sanity'] or '-'} |")
    return "\n".join(lines)


def _how(on_pgd: bool, just: bool) -> str:
    """What qualifies a change's place in the ablation summary: compared on PGD-20 only, or by a margin within
    :data:`featlab.verdicts.JUST` noise bands."""
    words = (["on PGD-20"] if on_pgd else []) + (["by a margin just beyond the noise"] if just else [])
    return f" ({'; '.join(words)})" if words else ""


def ablation_findings(records: list[dict[str, Any]], dataset: str = "cifar10", eps: float | None = None) -> dict[str, Any]:
    """What :data:`ABLATIONS` shows, as sentences computed from its rows (:func:`ablation_rows`): each row's worst case
    against the first row's (the reference), by :func:`featlab.verdicts.compare`; which one-at-a-time changes cost
    the reference robustness beyond the binomial noise (``costs``), made training collapse to chance (``collapsed``:
    clean accuracy tied with a guess), moved nothing (``ties``) or raised it (``gains``); and what the 6-epoch PGD-AT
    rows say. Keys: ``lines`` (one per row), ``summary``, ``costs``, ``collapsed``, ``ties``, ``gains``, ``compared``
    (run -> sentence). Empty lists and
    an empty summary without an ablation."""
    rows = ablation_rows(records, dataset, eps)
    out: dict[str, Any] = {"lines": [], "summary": "", "costs": [], "collapsed": [], "ties": [], "gains": [],
                           "compared": {}}
    if not rows:
        return out
    ref = rows[0]
    measured = lambda r: verdicts.Measurement(r["worst_attack"], r["worst"], r["n"])             # noqa: E731
    short = lambda r: r["label"].split(": ", 1)[-1].split(" (")[0]                               # noqa: E731
    guess = 100.0 / len(data.info(dataset).classes)
    at_chance = lambda r: verdicts.tie(verdicts.Measurement("clean", r["clean"], r["n"]),         # noqa: E731
                                       verdicts.Measurement("chance", guess, r["n"]))
    for r in rows[1:]:
        if r["worst"] is None or ref["worst"] is None:
            out["lines"].append(f"{short(r)}: not evaluated on these {r['n']} images yet")
            continue
        mine, theirs, note, on_pgd = measured(r), measured(ref), "", False
        if r["worst_attack"] != ref["worst_attack"]:        # not the same attacks yet: compare like for like
            if r["pgd20"] is not None and ref["pgd20"] is not None:
                on_pgd = True
                mine = verdicts.Measurement("pgd20", r["pgd20"], r["n"])
                theirs = verdicts.Measurement("pgd20", ref["pgd20"], ref["n"])
                note = (f" (on PGD-20, the attack both ran: its worst case so far is {r['worst_attack']}'s "
                        f"{r['worst']:.1f}, the reference's {ref['worst_attack']}'s {ref['worst']:.1f})")
            else:
                note = (f" (its worst case is {r['worst_attack']}'s, the reference's {ref['worst_attack']}'s: not "
                        f"the same attacks yet, an upper bound against a full evaluation)")
        said = out["compared"][r["run"]] = verdicts.compare(short(r), mine, "the reference AFD", theirs)
        out["lines"].append(said + (f"; its clean accuracy, {r['clean']:.1f}%, is at chance: the run collapsed"
                                    if at_chance(r) else "") + note)
        if r["role"] == "change":
            apart = not verdicts.tie(mine, theirs)
            out["collapsed" if at_chance(r) else "ties" if not apart else "costs" if mine.acc < theirs.acc
                else "gains"].append(short(r) + _how(on_pgd, apart and abs(mine.acc - theirs.acc) < verdicts.JUST
                                                      * verdicts.noise_band(mine, theirs)))
    costs = out["costs"]
    out["summary"] = (f"One change at a time (6 epochs, unless the change is the budget): {', '.join(costs) or 'no change'} "
                      f"{'costs' if len(costs) == 1 else 'cost'} the reference AFD its robustness beyond the binomial "
                      f"noise while it still learned; "
                      f"{', '.join(out['collapsed']) or 'none'} made training collapse to chance (no classifier is "
                      f"left to be robust); {', '.join(out['ties']) or 'none'} did not move it beyond the noise"
                      + (f"; {', '.join(out['gains'])} raised it beyond the noise." if out["gains"] else "."))
    at = [r for r in rows if r["role"] == "control" and r["worst"] is not None]
    if len(at) == 2 and ref["worst"] is not None:     # PGD-AT on the plain network, and on AFD's network and optimiser
        same = verdicts.tie(measured(at[0]), measured(at[1]))
        above = at[1]["worst"] > ref["worst"] and not verdicts.tie(measured(at[1]), measured(ref))
        just = above and at[1]["worst"] - ref["worst"] < verdicts.JUST * verdicts.noise_band(measured(at[1]), measured(ref))
        out["summary"] += " The two PGD-AT rows: " + verdicts.compare(short(at[0]), measured(at[0]), short(at[1]),
                                                                     measured(at[1])) + (
            (": no cost of AFD's network and optimiser to PGD-AT's robustness is measurable at these n (a tie is not "
             "proof of none)" + (
                f"; on them PGD-AT is ahead of AFD, at clean {at[1]['clean']:.1f} against AFD's {ref['clean']:.1f}"
                + (": a margin at the noise's edge, from one seed of each at 6 epochs, so it only suggests that the "
                   "objective is what separates the two (a few images could reverse it)." if just else
                   ": on this evidence the objective is what separates the two here, a trade of clean accuracy for "
                   "robustness.") if above else ".")) if same else ": the network and optimiser matter too.")
    return out


# Published robust accuracies to compare with (percent). "ours": the shipped featlab models trained with the same
# method (another architecture and a shorter budget: a comparison of recipes, not of methods). MNIST rows: AutoAttack's MNIST Linf 0.3
# table (Croce & Hein 2020, arXiv 2003.01690, and its leaderboard in the fra31/auto-attack
# repository, which adds later entries such as Gowal et al. 2020): clean / as reported by the
# authors / under AutoAttack. CIFAR-10 rows: RobustBench (AutoAttack).
PUBLISHED: list[dict[str, Any]] = [
    {"dataset": "mnist", "eps": 0.3, "defense": "PGD-AT (Madry et al. 2018)", "clean": 98.53, "reported": 89.62,
     "autoattack": 88.50, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)",
     "ours": ("mnist_resnet_pgd_at", "mnist_cnn_pgd_at")},
    {"dataset": "mnist", "eps": 0.3, "defense": "TRADES (Zhang et al. 2019)", "clean": 99.48, "reported": 95.60,
     "autoattack": 92.81, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)",
     "ours": ("mnist_resnet_trades",)},
    {"dataset": "mnist", "eps": 0.3, "defense": "Fast-AT (Wong et al. 2020)", "clean": 98.50, "reported": 88.77,
     "autoattack": 82.93, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "mnist", "eps": 0.3, "defense": "Gowal et al. 2020 (best listed)", "clean": 99.26, "reported": 96.38,
     "autoattack": 96.34, "source": "AutoAttack MNIST table / leaderboard (Croce & Hein 2020)"},
    {"dataset": "cifar10", "eps": 8 / 255, "defense": "Fast-AT PreActResNet-18", "clean": 83.34, "reported": None,
     "autoattack": 43.21, "source": "RobustBench", "ours": ("cifar_airnet_fast_at",)},
    {"dataset": "cifar10", "eps": 8 / 255, "defense": "TRADES WRN-34-10", "clean": 84.92, "reported": None,
     "autoattack": 53.08, "source": "RobustBench"},
]


def _published_lines(dataset: str, eps: float) -> list[str]:
    """The header and the :data:`PUBLISHED` rows of ``dataset`` at ``eps``; [] when nothing is published there."""
    published = [p for p in PUBLISHED if p["dataset"] == dataset and _eps_key(p["eps"]) == _eps_key(eps)]
    if not published:
        return []
    lines = ["| who | defense | clean | reported | AutoAttack (n) | worst of every attack (by, n) | sanity |",
             "|---|---|---|---|---|---|---|"]
    for p in published:
        reported = f"{p['reported']:.2f}" if p["reported"] is not None else "-"
        lines.append(f"| {p['source']} | {p['defense']} | {p['clean']:.2f} | {reported} | "
                     f"{p['autoattack']:.2f} (full test set) | - | - |")
    return lines


#: the test images behind a published number (the full test set of MNIST and of CIFAR-10)
PUBLISHED_N = 10000


def published_comparison(dataset: str, committed: dict[str, verdicts.Verdict]) -> list[str]:
    """One computed sentence per shipped model trained with a published method (:data:`PUBLISHED`'s "ours"),
    from its committed verdict (:func:`committed_verdicts`): its AutoAttack number (else its worst case, said
    so) against the published AutoAttack number on the full test set, a tie when the gap is within the binomial
    noise of the two n (:func:`featlab.verdicts.compare`). [] when none of ours was evaluated."""
    out = []
    for p in PUBLISHED:
        if p["dataset"] != dataset:
            continue
        for name in p.get("ours", ()):
            v = committed.get(name)
            if v is None:
                continue
            aa = [m for m in v.measurements if "autoattack" in m.attack and m.sees_defense]
            ours = min(aa, key=lambda m: m.acc) if aa else v.worst
            pub = verdicts.Measurement("autoattack", float(p["autoattack"]), PUBLISHED_N)
            if not aa and (ours.acc >= pub.acc or verdicts.tie(ours, pub)):   # an upper bound above: nothing follows
                out.append(f"{p['defense']}: {name}'s {ours.attack} {ours} is an upper bound (no AutoAttack committed), "
                           f"so it cannot be ranked against the published AutoAttack {pub} until AutoAttack runs on it")
                continue
            what = "AutoAttack" if aa else f"{ours.attack} (an upper bound, and still below)"
            out.append(f"{p['defense']}: " + verdicts.compare(f"{name}'s {what}", ours, "the published AutoAttack", pub))
    return out


def published_only_table(dataset: str, eps: float | None = None) -> str:
    """The published rows of :func:`published_table` alone (where no run of ours has records: Colab, a fresh
    install); "" when nothing is published at ``dataset``'s Linf eps (default: the dataset's)."""
    return "\n".join(_published_lines(dataset, float(data.threat_defaults(dataset)["eps"] if eps is None else eps)))


def published_table(records: list[dict[str, Any]], dataset: str, eps: float | None = None,
                    shipped_only: bool = False) -> str:
    """Our classifiers next to the published numbers of :data:`PUBLISHED` at ``dataset``'s Linf eps (default
    :func:`featlab.data.threat_defaults`: 0.3, 8/255): the published rows (clean, as reported, AutoAttack; on the
    full test set), then every run of ours with a white-box record there: its clean accuracy (on the worst case's
    images, as :func:`headline_table` shows it), its AutoAttack
    number with its n ("not run" when it has none), and its worst case over every attack with the checklist's
    verdict (:func:`worst_case`); a run shipped in :mod:`featlab.pretrained` says under which name. With
    ``shipped_only`` only those runs (what a reader of the notebooks met), not the experimental ones. Returns ""
    when no run of ours was evaluated at that eps, or nothing is published there."""
    eps = float(data.threat_defaults(dataset)["eps"] if eps is None else eps)
    clean: dict[str, tuple[int, float]] = {}     # per run: the clean accuracy of its largest evaluation here
    for r in records:
        if (r["dataset"] == dataset and r["threat_model"] == "white-box" and r["norm"] == "linf"
                and _eps_key(r["eps"]) == _eps_key(eps) and not _is_sanity_point(r)):
            name = _run_name(r)
            if name not in clean or r["n_eval"] > clean[name][0]:
                clean[name] = (r["n_eval"], r["clean_acc"])
    ours = [w for w in worst_case(records) if w["dataset"] == dataset and w["norm"] == "linf"
            and _eps_key(w["eps"]) == _eps_key(eps) and w["run"] in clean]    # classifiers (white-box records)
    shipped = {pretrained.info(k).get("run", ""): k for k in pretrained.available()}
    if shipped_only:
        ours = [w for w in ours if w["run"] in shipped]
    if not ours:
        return ""
    lines = _published_lines(dataset, eps)
    if not lines:
        return ""
    for w in ours:
        aa = w["attacks"].get("autoattack")
        aa_cell = f"**{aa[0]:.2f}** ({aa[1]})" if aa else "not run"
        c, n_clean = w["clean"]          # the worst case's own images, as the headline table shows it
        clean_cell = f"{c:.2f} ({n_clean})"
        name = w["run"] + (f" (shipped: `{shipped[w['run']]}`)" if w["run"] in shipped else "")
        lines.append(f"| featlab | {name} | {clean_cell} | - | {aa_cell} | {w['worst']:.2f} "
                     f"({w['worst_attack']}, {w['worst_n']}) | {w['sanity']} |")
    return "\n".join(lines)


def render(records: list[dict[str, Any]], title: str = "featlab results") -> str:
    """The Markdown page: one table per (dataset, model, method) and a command list per table."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:      # one table per trained run (two runs of one method stay apart)
        groups[(r["dataset"], r["model"], r["method"], _model_key(r))].append(r)
    lines = [f"# {title}", "",
             "Generated by `featlab results` from `results/*.json`; do not edit by hand. Accuracies in percent, "
             "eps in pixel units ([0, 1] images). `sanity` is the evaluation checklist "
             "(`featlab.checklist.checklist`); a FAIL means the number may be inflated by gradient masking.", "",
             "## Headline: the shipped models", "",
             "One row per model shipped in `featlab/pretrained/`, at its dataset's eps: clean accuracy, AutoAttack and "
             "the worst case over every attack that sees the whole defense, each with the n test images it ran on, and "
             "the verdict `featlab.verdicts.judge` draws from those numbers (the worst case decides; an oblivious "
             "number never does; a failed checklist makes it suspect unless Square, AutoAttack or BPDA already ran). "
             "The full tables follow.", "",
             headline_table(records), "",
             "## Summary: the worst case per run and eps", "",
             "The lowest robust accuracy that any attack seeing the whole defense reached (white-box, end-to-end, "
             "BPDA), with each attack's lowest number (and its n) beside it; an oblivious number is listed but never "
             "counts. A FAIL in the last column means the checklist flagged this eps: the worst case is then an upper "
             "bound until a stronger attack settles it. \"checked together\": no record failed its own checklist at "
             "this eps, but all the attacks on the same images and weights (same n, seed, weights), whichever "
             "`featlab eval` calls ran them, checked together with today's checklist fail (e.g. Square far below "
             "APGD in two calls). Attacks run on n test images each; rows "
             "with different n use different (stratified) images.", "",
             worst_case_table(records), ""]
    for dataset in sorted({r["dataset"] for r in records}):
        if dataset not in data.DATASETS:
            continue
        eps, n = data.threat_defaults(dataset)["eps"], 1000
        table = published_table(records, dataset)
        if table:
            lines += [f"## {dataset}: next to the published numbers at eps {_fmt_eps(eps, dataset, 'linf')}", "",
                      "The published rows are on the full test set and with their own architectures and "
                      "schedules (source in each row); ours are on n stratified test images, trained on this "
                      "project's machines (each run's table below has its command and wall time). \"not run\": "
                      "no AutoAttack record yet, so compare the worst case only as an upper bound.", "", table, ""]
        table = ablation_table(records, dataset)
        if table:
            lines += [f"## {dataset}: the AFD ablation, on the same {ABLATIONS[dataset]['n']} test images",
                      "", "One factor changed at a time from the reference-recipe AFD (each run: 6 epochs, batch 128, "
                      "one-cycle LR, on one CPU thread, except the two 12-epoch rows, whose change is the budget; its "
                      "command is in its table below).", "", table, ""]
        table = attack_table(records, dataset, eps, n)
        if table:
            lines += [f"## {dataset}: every attack on the same {n} test images at eps {_fmt_eps(eps, dataset, 'linf')}", "",
                      "One row per trained classifier with at least three attacks on these images (white-box); the "
                      "methods side by side. worst-case: per image, the worst over the attacks of one `featlab eval` "
                      "call (as AutoAttack counts). sanity: as in the summary (\"checked together\": the attacks of the row "
                      "checked with each other).", "", table, ""]
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
    """Render ``results_dir/*.json`` into ``out`` (default ``results_dir/RESULTS.md``), atomically, and the
    checklist's page (:func:`featlab.checklist.page`) into ``CHECKLIST.md`` beside it."""
    records = load(results_dir)
    if not records:
        raise ValueError(f"results_dir: no result records in {results_dir} (run featlab eval first)")
    path = Path(out) if out is not None else Path(results_dir) / "RESULTS.md"
    atomic_write_text(path.parent / "CHECKLIST.md", page())     # what every check column means, from the registry
    return atomic_write_text(path, render(records))


def record(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """One result record: the fields every record of a call shares (``base``: dataset, model, command,
    device...) plus this measurement's; accuracies rounded to two decimals. :func:`write_result` checks
    it holds every key of ``RESULT_KEYS``."""
    rec = {**base, **fields}
    for k in ("clean_acc", "robust_acc"):
        if isinstance(rec.get(k), float):
            rec[k] = round(rec[k], 2)
    return rec


def result_name(label: str, attack: str, norm: str, eps: float, n_eval: int) -> str:
    """The file name (without .json) of one sweep record: ``<label>_<attack>_<norm>_eps<eps>[_n<N>]``
    (``_n<N>`` when N is not the default 1,000 test images)."""
    return f"{label}_{attack}_{norm}_eps{eps:g}" + ("" if n_eval == 1000 else f"_n{n_eval}")
