"""One-off migration of committed result records to the one-formula PGD step rule (issue #15).

Until this change, ``from_spec("pgd40", model, 0.3)`` (and any 40-step Linf PGD spec at eps 0.3) used
step 0.01, Madry et al.'s MNIST attack, and every other PGD spec ``2.5 * eps / steps``; ``featlab eval``
on a denoiser used step 0.01 when called with ``--attacks pgd40 --eps 0.3``. Now a spec means one attack
at every eps (``2.5 * eps / steps``) and the old attack is spelt ``pgd40@0.01``. For every record that
ran with step 0.01 (read from the record itself: its ``attack_repr``, or for a preprocessing defense its
command) this

- appends ``@0.01`` to the attack's spec (``pgd40`` -> ``pgd40@0.01``, ``bpda-pgd40`` -> ``bpda-pgd40@0.01``,
  in a worst-case record's ``attacks`` too);
- keeps the command that ran as ``command_as_run`` and writes into ``command`` the command that runs the
  same attack now (``--attacks pgd40@0.01``);
- renames the file (``..._pgd40_linf_eps0.3.json`` -> ``..._pgd40@0.01_linf_eps0.3.json``);
- notes it all in ``migrated``. No number changes.

    python tools/migrate_step_rule.py results [more folders]     # idempotent
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NOTE = ("attack renamed to its @0.01 spec when featlab's PGD step rule became one formula (2.5 * eps / steps, "
        "issue #15); command_as_run ran under the old rule, which used step 0.01 for 40-step Linf PGD at eps 0.3; "
        "command runs the same attack now")
_PGD40 = re.compile(r"^(bpda-)?(pgd40(?:x\d+)?(?:_linf)?)(?=$| )")


def _ran_at_step_001(rec: dict) -> bool:
    attack = str(rec.get("attack", ""))
    if _PGD40.match(attack) is None or abs(float(rec.get("eps", -1)) - 0.3) > 1e-9:
        return False
    if rec.get("threat_model", "white-box") == "white-box":
        return "steps=40, step_size=0.01," in str(rec.get("attack_repr", ""))
    # a preprocessing defense: the old CLI used step 0.01 when called with --eps 0.3 alone and PGD-40
    eps = re.search(r"--eps((?: [0-9.]+)+)", str(rec.get("command", "")))
    return eps is not None and eps.group(1).split() == ["0.3"]


def _new_command(cmd: str) -> str:
    def fix(m: re.Match) -> str:
        return m.group(1) + " ".join(t + "@0.01" if re.fullmatch(r"pgd40(x\d+)?(_linf)?", t) else t
                                     for t in m.group(2).split(" "))
    return re.sub(r"(--attacks )((?:[^- ][^ ]* ?)+)", fix, cmd)


def migrate(rec: dict) -> bool:
    changed = False
    if "migrated" not in rec:
        if rec.get("attack") == "worst-case" and abs(float(rec["eps"]) - 0.3) < 1e-9 \
                and re.search(r"--eps 0\.3( |$)", str(rec.get("command", ""))) \
                and any(re.fullmatch(r"pgd40(x\d+)?(_linf)?", a) for a in rec.get("attacks", [])):
            rec["attacks"] = [a + "@0.01" if re.fullmatch(r"pgd40(x\d+)?(_linf)?", a) else a for a in rec["attacks"]]
            rec["attack_repr"] = "per-example worst case of " + " + ".join(rec["attacks"])
            rec["migrated"] = NOTE
            changed = True
        elif _ran_at_step_001(rec):
            rec["attack"] = _PGD40.sub(lambda m: (m.group(1) or "") + m.group(2) + "@0.01", rec["attack"])
            rec["migrated"] = NOTE
            changed = True
    same_call = (re.search(r"--eps 0\.3( |$)", str(rec.get("command", ""))) is not None
                 and "--norm l2" not in str(rec.get("command", "")))       # another attack of a call that ran pgd40
    if "command_as_run" not in rec and rec.get("command") and ("migrated" in rec or same_call) \
            and _new_command(rec["command"]) != rec["command"]:
        rec["command_as_run"] = rec["command"]
        rec["command"] = _new_command(rec["command"])
        rec["migrated"] = NOTE
        changed = True
    return changed


def main(folders: list[str]) -> None:
    total = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.json")):
            data = json.loads(path.read_text())
            recs = data if isinstance(data, list) else [data]
            if not all(isinstance(r, dict) and "attack" in r for r in recs):
                continue
            changed = sum(migrate(r) for r in recs)
            target = path
            spec = recs[0]["attack"].split(" ")[0]
            old_part = f"_{spec.replace('@0.01', '')}_{recs[0].get('norm')}_eps"
            if spec.endswith("@0.01") and all(r["attack"].split(" ")[0] == spec for r in recs) and old_part in path.name:
                target = path.with_name(path.name.replace(old_part, f"_{spec}_{recs[0]['norm']}_eps", 1))
            if changed or target != path:
                target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                if target != path:
                    path.unlink()
                total += changed
                print(f"{path} -> {target.name}: {changed} record(s)")
    print(f"{total} record(s) migrated")


if __name__ == "__main__":
    main(sys.argv[1:] or ["results"])
