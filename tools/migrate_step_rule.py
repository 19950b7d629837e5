"""One-off migration of committed result records to the one-formula PGD step rule (issue #15).

Until this change, ``from_spec("pgd40", model, 0.3)`` used step 0.01 (Madry et al.'s MNIST attack) and every
other PGD spec ``2.5 * eps / steps``; ``featlab eval`` on a denoiser used step 0.01 when called with
``--attacks pgd40 --eps 0.3``. Now a spec means one attack at every eps (``2.5 * eps / steps``) and the
old attack is spelt ``pgd40@0.01``. This renames the attack of every record that ran with step 0.01,
read from the record itself (its ``attack_repr``, or for a preprocessing defense its command), and notes
the rename in the record (``migrated``). No number changes.

    python tools/migrate_step_rule.py results [more folders]     # idempotent
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NOTE = ("attack renamed pgd40 -> pgd40@0.01 when featlab's PGD step rule became one formula (2.5 * eps / steps, "
        "issue #15); this record's command ran under the old rule, which used step 0.01 for pgd40 at eps 0.3")


def _old_rule_step_001(rec: dict) -> bool:
    if rec.get("threat_model", "white-box") == "white-box":
        return ("steps=40, step_size=0.01," in str(rec.get("attack_repr", ""))
                and str(rec.get("attack", "")).split(" ")[0] == "pgd40")
    # a preprocessing defense: the old CLI used step 0.01 when called with --eps 0.3 alone and PGD-40
    cmd = str(rec.get("command", ""))
    eps = re.search(r"--eps((?: [0-9.]+)+)", cmd)
    return (eps is not None and eps.group(1).split() == ["0.3"] and abs(float(rec["eps"]) - 0.3) < 1e-9
            and re.match(r"(bpda-)?pgd40( |$)", str(rec.get("attack", ""))) is not None)


def migrate(rec: dict) -> bool:
    if "migrated" in rec:
        return False
    if rec.get("attack") == "worst-case" and "pgd40" in rec.get("attacks", []) and abs(float(rec["eps"]) - 0.3) < 1e-9 \
            and re.search(r"--eps 0\.3( |$)", str(rec.get("command", ""))):
        # the per-image worst case of one eval call: its pgd40 ran at eps 0.3 with step 0.01
        rec["attacks"] = ["pgd40@0.01" if a == "pgd40" else a for a in rec["attacks"]]
        rec["attack_repr"] = "per-example worst case of " + " + ".join(rec["attacks"])
        rec["migrated"] = NOTE
        return True
    if not _old_rule_step_001(rec):
        return False
    rec["attack"] = re.sub(r"^(bpda-)?pgd40", r"\1pgd40@0.01", rec["attack"])
    rec["migrated"] = NOTE
    return True


def main(folders: list[str]) -> None:
    total = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.json")):
            data = json.loads(path.read_text())
            recs = data if isinstance(data, list) else [data]
            if not all(isinstance(r, dict) and "attack" in r for r in recs):
                continue
            changed = sum(migrate(r) for r in recs)
            if changed:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                total += changed
                print(f"{path}: {changed} record(s)")
    print(f"{total} record(s) migrated")


if __name__ == "__main__":
    main(sys.argv[1:] or ["results"])
