"""The CIFAR-10 feature-loss tap screen (issue 32: "the taps chosen by measurement"): one line per screened denoiser.

    python bench/tap_screen.py [--records results/cifar_tap_screen] [--out screen.json]

Each denoiser was trained for one epoch on the same 10,000-image subset in front of ``cifar_airnet_standard``, with a
feature loss on one tap, on all four spatial taps, or none (the pixel loss; each record holds its training command),
and evaluated with ``featlab eval --attacks pgd20 --eps 8/255 --n-eval 500``. The taps
come from each record's ``train_objective`` (what the run was trained on), not from its command line.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def summarise(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*_threat_models.json")):
        recs = [r for r in json.loads(path.read_text()) if r["eps"] > 0]
        by = {r["threat_model"]: r for r in recs if r["attack"].startswith(("pgd", "bpda"))}
        taps = recs[0]["train_objective"]["taps"]
        rows.append({"taps": " + ".join(taps) or "none (pixel loss)", "n_eval": recs[0]["n_eval"],
                     "clean": by["oblivious"]["clean_acc"],
                     **{tm: by[tm]["robust_acc"] for tm in ("none", "oblivious", "end-to-end", "bpda")},
                     "train_wall_s": recs[0]["train_wall_s"], "train_command": recs[0]["train_command"],
                     "record": path.name})
    return sorted(rows, key=lambda r: -r["oblivious"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, default=Path("results/cifar_tap_screen"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rows = summarise(a.records)
    if not rows:
        raise SystemExit(f"--records: no *_threat_models.json in {a.records}")
    n = rows[0]["n_eval"]
    print(f"PGD-20 at eps 8/255 on n={n} test images (95% half-width at 50%: +-{196 * math.sqrt(0.25 / n):.1f} points)")
    print(f"{'feature-loss taps':28s} {'clean':>6s} {'oblivious':>10s} {'end-to-end':>11s} {'bpda':>6s}  train s")
    for r in rows:
        print(f"{r['taps']:28s} {r['clean']:6.1f} {r['oblivious']:10.1f} {r['end-to-end']:11.1f} {r['bpda']:6.1f}  "
              f"{r['train_wall_s']:.0f}")
    if a.out:
        a.out.write_text(json.dumps({"tap_screen": rows}, indent=2) + "\n")
        print(f"-> {a.out}")


if __name__ == "__main__":
    main()
