"""featlab.results: the RESULTS.md tables (worst case, attack table, published numbers) from result records."""
import json
from pathlib import Path

import pytest

import featlab


def test_results_markdown_from_records(tmp_path):
    base = {"dataset": "mnist", "model": "mnist_cnn", "method": "pgd_at", "threat_model": "white-box", "norm": "linf",
            "n_eval": 1000, "clean_acc": 99.3, "epochs": 8, "seed": 0, "commit": "abc1234def", "device": "cpu",
            "date": "2026-11-23", "train_command": "featlab train --method pgd_at"}
    for atk, eps, acc in (("pgd40", 0.3, 96.1), ("fgsm", 0.3, 97.3)):
        rec = {**base, "attack": atk, "eps": eps, "robust_acc": acc, "wall_s": 1.0,
               "command": f"featlab eval --attacks {atk}"}
        (tmp_path / f"r_{atk}.json").write_text(json.dumps(rec))
    (tmp_path / "curves.json").write_text(json.dumps({"not": "a record"}))
    other = {**base, "train_command": "featlab train --method pgd_at --epochs 1 --out runs/short", "run": "short",
             "attack": "pgd40",
             "eps": 0.3, "robust_acc": 50.0, "wall_s": 1.0, "command": "featlab eval --run runs/short"}
    (tmp_path / "short.json").write_text(json.dumps(other))
    assert len(featlab.results.load(tmp_path)) == 3
    md = featlab.results.write_markdown(tmp_path).read_text()
    assert md.count("## mnist · mnist_cnn · pgd_at") == 2 and "· short" in md, "two runs, two tables"
    assert "| 96.10 |" in md and "`featlab eval --attacks pgd40`" in md
    assert "featlab train --method pgd_at" in md
    with pytest.raises(FileNotFoundError, match="results_dir"):
        featlab.results.load(tmp_path / "missing")


def test_worst_case_takes_the_strongest_attack_that_sees_the_defense(tmp_path):
    sanity = {"passed": False, "checks": [{"check": "more PGD steps/restarts do not raise accuracy", "passed": False,
                                           "detail": "pgd40 39.9% > pgd10 30.9% at eps 0.35", "eps": [0.35]}]}
    base = {"dataset": "mnist", "model": "m", "method": "pgd_at", "norm": "linf", "n_eval": 1000, "clean_acc": 99.0,
            "train_command": "featlab train --classifier-run runs/base --out runs/mine", "run": "mine", "sanity": sanity,
            "command": "featlab eval --run runs/mine --eps 0.3 0.35", "threat_model": "white-box"}
    recs = [{**base, "eps": 0.35, "attack": "fgsm", "robust_acc": 11.3},
            {**base, "eps": 0.35, "attack": "pgd40", "robust_acc": 39.9},
            {**base, "eps": 0.35, "attack": "pgd40", "robust_acc": 30.0, "n_eval": 500},
            {**base, "eps": 0.35, "threat_model": "oblivious", "attack": "pgd40 then denoised", "robust_acc": 5.0},
            {**base, "eps": 0.35, "threat_model": "none", "attack": "pgd40", "robust_acc": 0.0},
            {**base, "eps": 0.3, "attack": "pgd40", "robust_acc": 95.0},
            {**base, "eps": 0.3000001, "attack": "autoattack", "robust_acc": 93.0, "n_eval": 500},
            {**base, "eps": 1.0, "attack": "pgd40", "robust_acc": 0.0,      # the checklist's large-eps point
             "role": featlab.results.LARGE_EPS_ROLE}]
    w03, w035 = featlab.results.worst_case(recs)
    assert w035["run"] == "mine", "the run is the record's run folder, not the classifier it was trained against"
    assert (w035["worst"], w035["worst_attack"], w035["worst_n"]) == (11.3, "fgsm", 1000), "oblivious/none never count"
    assert w035["attacks"]["pgd40"] == (30.0, 500), "per attack, its lowest evaluation"
    assert w035["attacks"]["oblivious pgd40"] == (5.0, 1000)
    assert w035["sanity"] == "FAIL: more PGD steps/restarts do not raise accuracy", "its own checklist failed at 0.35"
    assert w03["sanity"] == "pass", "a failure at eps 0.35 says nothing about eps 0.3"
    assert (w03["worst"], w03["worst_attack"]) == (93.0, "autoattack"), "0.3 and 0.3000001 are one eps"
    assert featlab.results.worst_case([recs[3]]) == [], "an oblivious number alone gives no worst case"
    other = {**recs[0], "train_command": "featlab train --lr 0.5 --out runs/mine", "robust_acc": 1.0}
    assert len(featlab.results.worst_case(recs + [other])) == 3, "two trainings into one folder stay apart"
    for i, r in enumerate(recs):
        (tmp_path / f"r{i}.json").write_text(json.dumps({**r, "epochs": 1, "seed": 0, "commit": "c", "device": "cpu",
                                                          "date": "d", "wall_s": 1.0}))
    md = featlab.results.write_markdown(tmp_path).read_text()
    assert "## Summary: the worst case per run and eps" in md and "| **11.30** | fgsm | 1000 |" in md


def test_attack_table_puts_methods_side_by_side_on_the_same_images():
    base = {"dataset": "mnist", "model": "m", "norm": "linf", "n_eval": 1000, "threat_model": "white-box",
            "clean_acc": 99.0, "epochs": 8, "command": "featlab eval --eps 0.3"}
    recs = []
    for run, method, accs in (("a", "afd", {"pgd40": 97.0, "apgd": 93.5, "autoattack": 92.8}),
                              ("p", "pgd_at", {"pgd40": 97.3, "apgd": 94.8, "square": 93.9}),
                              ("few", "trades", {"pgd40": 96.0, "apgd": 90.0})):       # two attacks: left out
        recs += [{**base, "method": method, "train_command": f"featlab train --out runs/{run}", "run": run, "eps": 0.3,
                  "attack": k, "robust_acc": v} for k, v in accs.items()]
    recs.append({**recs[0], "n_eval": 500, "robust_acc": 1.0})              # other images: not in this table
    recs.append({**recs[0], "eps": 1.0, "attack": "pgd100", "robust_acc": 0.0, "role": "checklist large-eps point"})
    table = featlab.results.attack_table(recs, "mnist", 0.3, 1000).splitlines()
    assert table[0] == "| run | method | epochs | clean | pgd40 | apgd | square | autoattack | sanity |"
    assert table[2] == "| a | afd | 8 | 99.0 | 97.0 | 93.5 |  | 92.8 | not run |"
    assert table[3] == "| p | pgd_at | 8 | 99.0 | 97.3 | 94.8 | 93.9 |  | not run |"
    assert len(table) == 4
    assert featlab.results.attack_table(recs, "mnist", 0.1, 1000) == ""


def test_attacks_of_separate_calls_on_the_same_images_are_checked_together():
    """Each featlab eval call checks its own attacks only; a Square run on its own passes. The summary
    checks the calls on the same images together: Square far below APGD there is gradient masking."""
    ok = {"passed": True, "checks": [{"check": "input gradients exist", "passed": True, "detail": "ok"}]}
    base = {"dataset": "mnist", "model": "m", "method": "afd", "norm": "linf", "n_eval": 1000, "seed": 0,
            "threat_model": "white-box", "clean_acc": 99.5, "eps": 0.35, "sanity": ok,
            "train_command": "featlab train --out runs/a", "run": "a", "command": "featlab eval --run runs/a --eps 0.35"}
    apgd = {**base, "attack": "apgd", "robust_acc": 42.4}
    square = {**base, "attack": "square", "robust_acc": 4.5}
    (w,) = featlab.results.worst_case([apgd, square])
    assert w["worst"] == 4.5
    assert w["sanity"] == "FAIL (checked together: gradient-free square not stronger than gradient attacks)"
    assert featlab.results.worst_case([apgd, {**square, "robust_acc": 42.0}])[0]["sanity"] == "pass"
    # other images (another n or seed) or other weights (the fp16 shipped copy) are not compared
    for other in ({"n_eval": 500}, {"seed": 1}, {"weights": "featlab.pretrained:m (float16)"}, {"precision": "bf16"}):
        assert featlab.results.worst_case([apgd, {**square, **other}])[0]["sanity"] == "pass"
    table = featlab.results.attack_table([apgd, square, {**base, "attack": "pgd40", "robust_acc": 60.0}],
                                         "mnist", 0.35, 1000)
    assert table.splitlines()[2].endswith("| FAIL (checked together: PGD not far weaker than apgd; gradient-free square "
                                          "not stronger than gradient attacks) |")
    # a record whose own checklist failed says so first
    failed = {"passed": False, "checks": [{"check": "c", "passed": False, "detail": "x at eps 0.35"}]}
    assert featlab.results.worst_case([{**apgd, "sanity": failed}, square])[0]["sanity"] == "FAIL: c", "named"
    # records without a checklist of their own are still checked together
    bare = [{k: v for k, v in r.items() if k != "sanity"} for r in (apgd, square)]
    assert featlab.results.worst_case(bare)[0]["sanity"].startswith("FAIL (checked together")
    assert featlab.results.worst_case(bare[:1])[0]["sanity"] == "not run"


def test_published_table_puts_our_runs_under_the_published_numbers():
    base = {"dataset": "cifar10", "model": "m", "method": "pgd_at", "norm": "linf", "seed": 0, "threat_model": "white-box",
            "train_command": "featlab train --out runs/fast", "run": "fast", "command": "featlab eval --run runs/fast",
            "wall_s": 1.0, "device": "cpu", "commit": "c"}
    recs = [{**base, "eps": 0.0313725, "attack": "pgd20", "n_eval": 1000, "clean_acc": 78.1, "robust_acc": 43.4},
            {**base, "eps": 8 / 255, "attack": "autoattack", "n_eval": 200, "clean_acc": 79.0, "robust_acc": 40.5},
            {**base, "eps": 1.0, "attack": "pgd20", "n_eval": 5000, "clean_acc": 1.0, "robust_acc": 0.0,
             "role": "checklist large-eps point"},
            {**base, "train_command": "featlab train --method denoiser --out runs/den", "run": "den",
             "threat_model": "end-to-end",
             "eps": 8 / 255, "attack": "pgd20", "n_eval": 1000, "clean_acc": 90.0, "robust_acc": 5.0}]
    lines = featlab.results.published_table(recs, "cifar10").splitlines()
    assert any("| RobustBench | Fast-AT PreActResNet-18 | 83.34 | - | 43.21 (full test set) |" in line for line in lines)
    (ours,) = [line for line in lines if line.startswith("| featlab |")]
    assert ours == "| featlab | fast | 79.00 (200) | - | **40.50** (200) | 40.50 (autoattack, 200) | not run |", \
        "clean on the worst case's images, as the headline shows it (not the large-eps point); a denoiser has no " \
        "white-box row"
    assert featlab.results.published_table(recs, "cifar10", eps=4 / 255) == "", "nothing published at 4/255"
    assert featlab.results.published_table([{**r, "dataset": "cifar100"} for r in recs], "cifar100") == ""
    alone = featlab.results.published_only_table("cifar10").splitlines()      # no run of ours: the published rows
    assert alone == lines[:len(alone)] and len(alone) == len(lines) - 1
    assert featlab.results.published_only_table("cifar100") == ""
    assert featlab.results.published_table([{**recs[0], "attack": "fgsm"}], "cifar10").splitlines()[-1].split(" | ")[4] \
        == "not run"
    entry = featlab.pretrained.info("cifar_airnet_fast_at")
    shipped = {"train_command": entry["train_command"], "run": entry["run"]}
    md = featlab.results.render([{**r, **shipped} for r in recs[:2]])
    assert "## cifar10: next to the published numbers at eps 8/255" in md
    assert "cifar_airnet_fast_at (shipped: `cifar_airnet_fast_at`)" in md
    # shipped_only keeps the runs a reader met in the notebooks: the experimental run "fast" is left out
    assert featlab.results.published_table(recs, "cifar10", shipped_only=True) == ""
    mixed = recs[:2] + [{**r, **shipped} for r in recs[:2]]
    rows = [line for line in featlab.results.published_table(mixed, "cifar10", shipped_only=True).splitlines()
            if line.startswith("| featlab |")]
    assert len(rows) == 1 and "(shipped: `cifar_airnet_fast_at`)" in rows[0]


def test_every_committed_record_reads_back_with_its_fields():
    """The committed results/ (migrated once by tools/migrate_record_fields.py): every record loads, its numbers are
    percentages of a positive n, and what the tables group by is a field (never parsed out of a command line)."""
    from pathlib import Path
    from featlab import pretrained, results
    root = Path(__file__).resolve().parent.parent / "results"
    recs = results.load(root)
    assert len(recs) > 200
    for r in recs:
        assert 0 <= r["robust_acc"] <= 100 and 0 <= r["clean_acc"] <= 100 and r["n_eval"] > 0, r.get("command")
        if "--out" in str(r.get("train_command", "")):
            assert r.get("run"), r["train_command"]
    points = [r for r in recs if r.get("role") == results.LARGE_EPS_ROLE]
    assert points and all(r["eps"] == 1.0 and r["norm"] == "linf" for r in points), "the checklist's points: Linf 1"
    assert not any(r["eps"] == 1.0 and r["threat_model"] == "white-box" and r.get("role") != results.LARGE_EPS_ROLE
                   and "--eps 1" not in str(r.get("command")) for r in recs), "a Linf-1 point not asked for is the role"
    assert all(pretrained.info(k).get("run") for k in pretrained.available()), "every shipped model names its run"


def test_the_tap_screen_reads_each_runs_taps_from_its_record():
    """bench/tap_screen.py: one row per committed screen record, its taps from the record's train_objective (no
    command line parsed), best oblivious first, every row on the same 500 test images."""
    import importlib.util
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("tap_screen", root / "bench" / "tap_screen.py")
    screen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screen)
    rows = screen.summarise(root / "results" / "cifar_tap_screen")
    assert {r["taps"] for r in rows} == {"stem", "block1", "block2", "block3", "block1 + block2 + block3 + stem",
                                         "none (pixel loss)"}
    assert {r["n_eval"] for r in rows} == {500}
    assert [r["oblivious"] for r in rows] == sorted((r["oblivious"] for r in rows), reverse=True)


def _ablation_record(run, attack, acc, clean):
    return {"dataset": "cifar10", "model": "cifar_airnet_l2", "method": "afd", "threat_model": "white-box",
            "norm": "linf", "eps": 8 / 255, "attack": attack, "n_eval": 500, "clean_acc": clean, "robust_acc": acc,
            "run": run}


def test_the_ablation_findings_sort_each_change_by_its_numbers():
    from featlab import results
    runs = [run for _, run, _ in results.ABLATIONS["cifar10"]["rows"]]
    recs = [_ablation_record(runs[0], "autoattack", 29.2, 70.6),     # the reference
            _ablation_record(runs[1], "autoattack", 27.0, 74.0),     # within the noise of it: a tie
            _ablation_record(runs[2], "autoattack", 0.0, 87.4),      # far below, still learned: a cost
            _ablation_record(runs[3], "autoattack", 10.6, 11.2),     # clean at chance: a collapse
            _ablation_record(runs[5], "autoattack", 38.4, 68.2), _ablation_record(runs[6], "autoattack", 35.0, 61.6)]
    f = results.ablation_findings(recs, "cifar10")
    short = lambda i: results.ABLATIONS["cifar10"]["rows"][i][0].split(": ", 1)[-1].split(" (")[0]
    assert f["ties"] == [short(1)] and f["costs"] == [short(2)] and f["collapsed"] == [short(3)] and f["gains"] == []
    more = results.ablation_findings(recs + [_ablation_record(runs[7], "autoattack", 40.0, 78.0)], "cifar10")
    assert more["gains"] == [short(7)] and "raised it beyond the noise" in more["summary"]
    assert any("not evaluated" in line for line in f["lines"])       # the row without a record (runs[4])
    # 35.0 against 29.2 on 500: beyond the noise by a hair, so the objective is only suggested
    assert "only suggests that the objective is what separates the two" in f["summary"]
    clear = results.ablation_findings([r if r["run"] != runs[6] else _ablation_record(runs[6], "autoattack", 45.0, 61.6)
                                       for r in recs if r["run"] != runs[5]] + [_ablation_record(runs[5], "autoattack",
                                                                                                 45.0, 68.2)], "cifar10")
    assert "on this evidence the objective is what separates the two here" in clear["summary"]
    assert "no cost of AFD's network and optimiser to PGD-AT's robustness is measurable" in f["summary"]   # a tie, not proof
    assert f"{short(2)} costs the reference AFD" in f["summary"]
    assert results.ablation_findings(recs, "mnist")["summary"] == ""  # no ablation on MNIST
    # a change with PGD-20 only, against the reference's AutoAttack: compared on PGD-20, the attack both ran
    # (38.4 against 32.2 on 500: just beyond the noise), never its PGD-20 against the reference's AutoAttack
    pgd = recs + [_ablation_record(runs[0], "pgd20", 32.2, 70.6), _ablation_record(runs[7], "pgd20", 38.4, 78.8)]
    g = results.ablation_findings(pgd, "cifar10")
    line = next(x for x in g["lines"] if x.startswith(short(7)))
    assert "38.4% (n=500)" in line and "32.2% (n=500)" in line and "on PGD-20, the attack both ran" in line
    assert "29.2" in line                                  # the reference's AutoAttack, named as its worst case
    assert g["gains"] == [short(7) + " (on PGD-20; by a margin just beyond the noise)"]
    flat = results.ablation_findings(recs + [_ablation_record(runs[0], "pgd20", 36.0, 70.6),
                                             _ablation_record(runs[7], "pgd20", 38.4, 78.8)], "cifar10")
    assert flat["ties"] == [short(1), short(7) + " (on PGD-20)"]      # 38.4 vs 36.0: within the noise
