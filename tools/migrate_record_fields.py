"""One-off migration (issue #30): result records and the pretrained manifest carry as fields what featlab.results
used to parse back out of their command lines.

- ``run``: the run folder the model was trained into, until now read from ``--out`` of the record's
  ``train_command`` (else its first ``runs/...`` word); written only where the command names one.
- ``role: "checklist large-eps point"``: the checklist's large-eps point (Linf 1, any image), until now recognised
  by an eps that is not among the ``--eps`` values of the record's ``command`` (records made before ``featlab eval``
  wrote the role).
- every failed check in a record's ``sanity`` gets ``eps``: the eps its failures concern, until now found by
  matching "at eps <eps>" in its text (None where the text names no eps: a failure about every eps).
- every manifest entry of ``featlab/pretrained/manifest.json`` gets ``run`` the same way.

No number changes; a record is rewritten only when a field is added. Idempotent.

    python tools/migrate_record_fields.py results featlab/pretrained/manifest.json
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

LARGE_EPS_ROLE = "checklist large-eps point"


def run_from_command(command: str | None) -> str | None:
    words = str(command or "").split()
    if "--out" in words[:-1]:
        return Path(words[words.index("--out") + 1]).name
    return next((w.split("/")[-1] for w in words if w.startswith("runs/")), None)


def _eps_key(eps: float) -> str:
    return f"{float(eps):.4g}"


def is_large_eps_point(rec: dict[str, Any]) -> bool:
    words = str(rec.get("command", "")).split()
    if "--eps" not in words:
        return False
    given = []
    for w in words[words.index("--eps") + 1:]:
        try:
            given.append(_eps_key(float(w)))
        except ValueError:
            break
    return bool(given) and "eps" in rec and _eps_key(rec["eps"]) not in given


AT_EPS = re.compile(r"at eps ([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)(/255)?(?![0-9./])")


def failed_check_eps(detail: str) -> list[float] | None:
    """The eps a failed check's text names ("at eps 0.35", "at eps 8/255"), sorted; None when it names none."""
    found = {float(v) / (255.0 if per255 else 1.0) for v, per255 in AT_EPS.findall(str(detail))}
    return sorted(found) if found else None


def migrate_record(rec: dict[str, Any]) -> bool:
    changed = False
    for c in (rec.get("sanity") or {}).get("checks", []):
        if not c.get("passed", True) and "eps" not in c:
            c["eps"], changed = failed_check_eps(c.get("detail", "")), True
    run = run_from_command(rec.get("train_command"))
    if run is not None and "run" not in rec:
        rec["run"], changed = run, True
    if "role" not in rec and is_large_eps_point(rec):
        rec["role"], changed = LARGE_EPS_ROLE, True
    return changed


def migrate_file(path: Path) -> bool:
    data = json.loads(path.read_text())
    recs = data if isinstance(data, list) else [data]
    changed = any([migrate_record(r) for r in recs if isinstance(r, dict)])
    if changed:
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return changed


def migrate_manifest(path: Path) -> int:
    man = json.loads(path.read_text())
    n = 0
    for entry in man.values():
        run = run_from_command(entry.get("train_command"))
        if run is not None and entry.get("run") != run:
            entry["run"], n = run, n + 1
    if n:
        path.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return n


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        p = Path(arg)
        if p.suffix == ".json" and p.name == "manifest.json":
            print(f"{p}: {migrate_manifest(p)} entries")
        else:
            files = sorted(p.rglob("*.json"))
            print(f"{p}: {sum(migrate_file(f) for f in files)} of {len(files)} files")
