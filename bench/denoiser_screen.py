"""The denoiser architecture screen: one line per screened run from its threat-model records.

    python bench/denoiser_screen.py [--records results/denoiser_screen] [--out screen.json]

Each run trained one architecture for one epoch on all 60,000 MNIST images (its training command is in
the record) and was evaluated with ``featlab eval --attacks pgd40@0.01 --eps 0.3 --n-eval 1000``. ``--out``
writes ``{"architecture_screen": [...]}``, the metrics ``featlab export --metrics`` ships with a denoiser
(notebook 02 prints them).
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path


def loss_kind(train_command: str) -> str:
    """"pixel" when the run's feature loss had no taps (``--feature-taps`` given no names), else "feature"."""
    args = shlex.split(train_command)
    if "--feature-taps" in args:
        i = args.index("--feature-taps")
        if i + 1 == len(args) or args[i + 1].startswith("--"):
            return "pixel"
    return "feature"


def summarise(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*_threat_models.json")):
        recs = json.loads(path.read_text())
        by = {r["threat_model"]: r for r in recs if r["attack"].startswith(("pgd", "bpda"))}
        rows.append({"arch": recs[0]["model"].removesuffix("_denoiser"), "loss": loss_kind(recs[0]["train_command"]),
                     "epochs": recs[0]["epochs"], "train_wall_s": recs[0]["train_wall_s"], "eps": by["oblivious"]["eps"],
                     "n_eval": recs[0]["n_eval"], "clean": by["oblivious"]["clean_acc"],
                     **{tm: by[tm]["robust_acc"] for tm in ("oblivious", "end-to-end", "bpda")},
                     "train_command": recs[0]["train_command"], "record": path.name})
    return sorted(rows, key=lambda r: -r["oblivious"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, default=Path("results/denoiser_screen"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rows = summarise(a.records)
    if not rows:
        raise SystemExit(f"--records: no *_threat_models.json in {a.records}")
    print(f"{'arch':11s} {'loss':8s} {'clean':>6s} {'oblivious':>10s} {'end-to-end':>11s} {'bpda':>6s}  train s")
    for r in rows:
        print(f"{r['arch']:11s} {r['loss']:8s} {r['clean']:6.1f} {r['oblivious']:10.1f} {r['end-to-end']:11.1f} "
              f"{r['bpda']:6.1f}  {r['train_wall_s']:.0f}")
    if a.out:
        a.out.write_text(json.dumps({"architecture_screen": rows}, indent=2) + "\n")
        print(f"-> {a.out}")


if __name__ == "__main__":
    main()
