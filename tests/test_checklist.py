"""featlab.evaluate.sweep / checklist / autoattack and featlab.results (issue: honest evaluation)."""
import json
import warnings

import pytest
import torch
from torch import nn

import featlab
from featlab.attacks import BPDA, PGD, autoattack, from_spec
from featlab.models import Defended
from featlab.defenses import Quantize
from featlab.attacks import GradientMaskingWarning
from featlab.checklist import checklist, report_checks
from featlab.evaluate import audit, sweep
from featlab.metrics import input_gradient_stats, robust_accuracy
from conftest import tiny_model


def planted_masking(model):
    """A planted gradient-masking "defense": the classifier sees x rounded to 1/255 (a no-op on MNIST
    pixels, so no real robustness), and the gradient of rounding is zero.

    PGD and FGSM find nothing, so its PGD accuracy looks like its clean accuracy; the checklist
    must flag it, and BPDA must break it.
    """
    return Defended(Quantize(8), model)


def _rows(curve, attack="pgd40"):
    return [{"attack": attack, "eps": e, "robust_acc": a} for e, a in curve.items()]


def test_checklist_flags_planted_gradient_masking(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    x, y = xt[:200], yt[:200]
    masked = planted_masking(trained_mnist).eval()
    with pytest.warns(GradientMaskingWarning, match="suspect gradient masking"):
        rep = audit(masked, x, y, [0.1, 0.3], attacks=("fgsm", "pgd10"), progress=False, label="quantized")
    failed = {c["check"] for c in rep["checks"] if not c["passed"]}
    assert not rep["passed"]
    assert "input gradients exist" in failed and "reaches ~0 at eps 1" in failed
    pgd03 = next(r["robust_acc"] for r in rep["rows"] if r["attack"] == "pgd10" and r["eps"] == 0.3)
    assert pgd03 > 80        # the fake robustness the checklist is there to catch
    sq = sweep(masked, x, y, ["square100"], [0.3], progress=False)
    assert sq[0]["robust_acc"] < pgd03 - 30, "Square needs no gradient, so the rounding does not stop it"
    sq_check = {c["check"]: c for c in checklist(rep["rows"] + sq)}["gradient-free square100 not stronger than gradient attacks"]
    assert not sq_check["passed"] and "square100" in sq_check["detail"]
    assert rep["gradient_stats"]["dead_fraction"] == 100.0
    bpda = robust_accuracy(masked, x, y, BPDA(Quantize(8), trained_mnist, eps=0.3, steps=10, step_size=0.075),
                           progress=False)
    assert bpda < pgd03 - 30, "BPDA sees through the rounding"


def test_checklist_passes_an_honest_model(trained_mnist, mnist_small):
    _, _, xt, yt = mnist_small
    x, y = xt[:200], yt[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        rep = audit(trained_mnist, x, y, [0.05, 0.1, 0.2], attacks=("fgsm", "pgd10", "pgd20"), progress=False)
    assert rep["passed"], rep["text"]
    accs = [r["robust_acc"] for r in rep["rows"] if r["attack"] == "pgd20" and r["eps"] < 1]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
    assert input_gradient_stats(trained_mnist, x, y)["dead_fraction"] < 50


@pytest.mark.parametrize("rows,extra,check", [
    (_rows({0.1: 50.0, 0.2: 60.0}), {}, "monotone in eps (pgd40)"),
    (_rows({0.1: 50.0}) + _rows({0.1: 40.0}, "fgsm"), {}, "iterative attacks at least as strong as FGSM"),
    (_rows({0.1: 50.0}, "pgd10") + _rows({0.1: 55.0}, "pgd40x3"), {}, "more PGD steps/restarts do not raise accuracy"),
    (_rows({0.1: 50.0}) + _rows({0.1: 52.0}, "autoattack"), {}, "autoattack <= PGD"),
    (_rows({1.0: 30.0}), {"large_eps": 1.0}, "reaches ~0 at eps 1"),
    ([{"threat_model": "oblivious", "eps": 0.3, "robust_acc": 20.0},
      {"threat_model": "end-to-end", "eps": 0.3, "robust_acc": 40.0}], {}, "end-to-end <= oblivious"),
    ([], {"gradient_stats": {"dead_fraction": 80.0, "median_grad_norm": 0.0}}, "input gradients exist"),
    (_rows({0.3: 90.0}) + _rows({0.3: 88.0}, "apgd") + _rows({0.3: 80.0}, "square"), {},
     "gradient-free square not stronger than gradient attacks"),
])
def test_each_check_fails_on_its_own_symptom(rows, extra, check):
    checks = {c["check"]: c for c in checklist(rows, **extra)}
    assert check in checks and not checks[check]["passed"], checks
    with pytest.warns(GradientMaskingWarning, match=check.split(" (")[0][:20]):
        report_checks(list(checks.values()))


def test_checklist_passes_consistent_rows():
    rows = (_rows({0.1: 60.0, 0.3: 20.0, 1.0: 0.0}) + _rows({0.1: 70.0, 0.3: 35.0}, "fgsm")
            + _rows({0.1: 62.0, 0.3: 21.0}, "pgd10") + _rows({0.1: 59.0, 0.3: 19.0}, "autoattack")
            + _rows({0.1: 61.0, 0.3: 30.0}, "square") + _rows({0.3: 90.0}, "pgd40_l2"))   # L2: not compared with FGSM
    checks = checklist(rows, large_eps=1.0)
    assert len(checks) >= 9 and all(c["passed"] for c in checks), checks
    assert any(c["check"].startswith("gradient-free square") for c in checks)


def test_square_is_compared_in_its_own_norm_and_never_at_eps_zero():
    name = "gradient-free square not stronger than gradient attacks"
    linf = _rows({0.3: 50.0}) + _rows({0.3: 30.0}, "square")
    assert not {c["check"]: c for c in checklist(linf)}[name]["passed"]
    # a stronger L2 PGD says nothing about Linf Square (by the spec's tail, or by the rows' norm)
    assert {c["check"]: c for c in checklist(linf + _rows({0.3: 10.0}, "pgd40_l2"))}[name]["passed"] is False
    l2 = [{"attack": "pgd10", "eps": 0.3, "norm": "l2", "robust_acc": 90.0}]
    square_linf = [{"attack": "square", "eps": 0.3, "norm": "linf", "robust_acc": 30.0}]
    assert name not in {c["check"] for c in checklist(l2 + square_linf)}
    # eps 0 rows (the clean accuracy every sweep writes) are no comparison
    assert name not in {c["check"] for c in checklist(_rows({0.0: 99.0, 0.3: 30.0}, "square") + _rows({0.0: 99.0, 0.1: 60.0}))}


def test_sweep_rows_and_bad_arguments(tiny):
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    rows = sweep(tiny, x, y, ["fgsm", "pgd5"], [0.0, 0.1], progress=False)
    assert [(r["attack"], r["eps"]) for r in rows] == [("fgsm", 0.0), ("fgsm", 0.1), ("pgd5", 0.0), ("pgd5", 0.1)]
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"]
    with pytest.raises(ValueError, match="eps must be >= 0"):
        sweep(tiny, x, y, ["fgsm"], [-0.1], progress=False)
    with pytest.raises(ValueError, match="eps_list: give at least one eps"):
        sweep(tiny, x, y, ["fgsm"], [], progress=False)
    with pytest.raises(ValueError, match="unknown attack spec 'cw'"):
        sweep(tiny, x, y, ["cw"], [0.1], progress=False)


@pytest.mark.parametrize("spec,cls,fields", [
    ("fgsm", "FGSM", {}), ("pgd", "PGD", {"steps": 40, "step_size": 2.5 * 0.3 / 40}),
    ("pgd40@0.01", "PGD", {"steps": 40, "step_size": 0.01}), ("pgd10x2_l2@0.05", "PGD", {"step_size": 0.05, "restarts": 2}),
    ("pgd20x3", "PGD", {"steps": 20, "restarts": 3}), ("pgd10_l2", "PGD", {"norm": "l2"}),
    ("square", "Square", {"n_queries": 5000, "norm": "linf"}), ("square300", "Square", {"n_queries": 300}),
])
def test_from_spec(tiny, spec, cls, fields):
    atk = from_spec(spec, tiny, 0.3)
    # torchattacks' attacks come wrapped as featlab attacks (they check their input); the wrapped one is .attack
    assert type(getattr(atk, "attack", atk)).__name__ == cls
    for k, v in fields.items():
        assert getattr(atk, k) == pytest.approx(v) if isinstance(v, float) else getattr(atk, k) == v


@pytest.mark.parametrize("spec", ["pgdx", "pgd10_l3", "pgd10xz", "apgd-dlr", "pgd0", "pgd10x0", "square0", "squarex",
                                  "pgd40@0", "pgd40@", "pgd40@x", "pgd40@0.01_l2"])
def test_from_spec_rejects_bad_specs(tiny, spec):
    with pytest.raises(ValueError, match="allowed: fgsm, pgdN"):
        from_spec(spec, tiny, 0.1)


def test_one_step_rule_at_every_eps(tiny):
    """A spec means the same attack at every eps: its step is 2.5 * eps / steps (no special case at
    eps 0.3), unless the spec names its step."""
    for spec, steps in (("pgd40", 40), ("pgd10", 10), ("pgd7x2_l2", 7)):
        for eps in (0.1, 0.3, 0.35, 8 / 255):
            assert from_spec(spec, tiny, eps).step_size == pytest.approx(2.5 * eps / steps)
    assert {from_spec("pgd40@0.01", tiny, eps).step_size for eps in (0.1, 0.3, 0.35)} == {0.01}


def test_registry_metadata_drives_the_checklist():
    reg = featlab.attacks.REGISTRY
    assert reg["square"].gradient_free and not reg["square"].iterative
    assert reg["apgd"].parameter_free and reg["apgd"].composite and "square" not in reg["apgd"].members
    assert "square" in reg["autoattack"].members and not reg["fgsm"].iterative
    # a Square stronger than the gradient attacks fails the gradient-free check; AutoAttack (which holds
    # Square) is not counted as a gradient attack, APGD is
    rows = (_rows({0.3: 80.0}, "pgd40") + _rows({0.3: 70.0}, "square1000") + _rows({0.3: 60.0}, "autoattack"))
    checks = {c["check"]: c["passed"] for c in checklist(rows)}
    assert checks["gradient-free square1000 not stronger than gradient attacks"] is False
    rows = _rows({0.3: 80.0}, "pgd40") + _rows({0.3: 69.0}, "apgd") + _rows({0.3: 70.0}, "square1000")
    assert {c["check"]: c["passed"] for c in checklist(rows)}["gradient-free square1000 not stronger than gradient attacks"]
    # an explicit step still counts as PGD for "more effort does not raise accuracy"
    rows = _rows({0.3: 50.0}, "pgd10@0.05") + _rows({0.3: 60.0}, "pgd40@0.01")
    assert not {c["check"]: c["passed"] for c in checklist(rows)}["more PGD steps/restarts do not raise accuracy"]


def test_from_spec_norms(tiny):
    with pytest.raises(ValueError, match="fgsm is an Linf attack"):
        from_spec("fgsm", tiny, 0.5, norm="l2")
    assert from_spec("pgd10", tiny, 0.5, norm="l2").norm == "l2"
    assert from_spec("pgd10_linf", tiny, 0.1, norm="l2").norm == "linf"
    assert featlab.attacks.strongest_pgd(["pgd40", "pgd10x5", "fgsm"]) == "pgd10x5"
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    rows = sweep(tiny, x, y, ["pgd3_linf", "pgd3"], [0.5], norm="l2", progress=False)
    assert [r["norm"] for r in rows] == ["linf", "l2"]


def test_tolerance_is_at_least_one_image():
    rows = _rows({0.1: 50.0}, "pgd10") + _rows({0.1: 51.6}, "pgd40")     # one image of 60 more
    assert not all(c["passed"] for c in checklist(rows))
    assert all(c["passed"] for c in checklist(rows, n=60))


def test_autoattack_builds_from_torchattacks_with_full_iterations():
    pytest.importorskip("torchattacks")
    tiny = tiny_model(num_classes=4)          # APGD-T's DLR loss needs 4 classes (3 is refused by name)
    std = autoattack(tiny, eps=0.3)
    names = [type(a).__name__ for a in std.attacks]
    assert names == ["APGD", "APGDT", "FAB", "Square"]
    assert all(a.steps == 100 for a in std.attacks[:3]) and std.attacks[3].n_queries == 5000
    assert [type(a).__name__ for a in autoattack(tiny, eps=0.3, version="fast").attacks] == ["APGD", "APGDT"]
    with pytest.raises(ValueError, match="version must be one of"):
        autoattack(tiny, eps=0.3, version="plus")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        autoattack(tiny, eps=-1)


def test_autoattack_fast_is_at_least_as_strong_as_pgd(trained_mnist, mnist_small):
    pytest.importorskip("torchattacks")
    _, _, xt, yt = mnist_small
    x, y = xt[:200], yt[:200]
    featlab.seed_everything(0)
    pgd = robust_accuracy(trained_mnist, x, y, PGD(trained_mnist, eps=0.1, steps=20), progress=False)
    aa = robust_accuracy(trained_mnist, x, y, autoattack(trained_mnist, eps=0.1, version="fast", steps=20),
                         progress=False)
    x_adv = autoattack(trained_mnist, eps=0.1, version="fast", steps=20)(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert aa <= pgd + 1.0, (aa, pgd)


def test_results_markdown_from_records(tmp_path):
    base = {"dataset": "mnist", "model": "mnist_cnn", "method": "pgd_at", "threat_model": "white-box", "norm": "linf",
            "n_eval": 1000, "clean_acc": 99.3, "epochs": 8, "seed": 0, "commit": "abc1234def", "device": "cpu",
            "date": "2026-11-23", "train_command": "featlab train --method pgd_at"}
    for atk, eps, acc in (("pgd40", 0.3, 96.1), ("fgsm", 0.3, 97.3)):
        rec = {**base, "attack": atk, "eps": eps, "robust_acc": acc, "wall_s": 1.0,
               "command": f"featlab eval --attacks {atk}"}
        (tmp_path / f"r_{atk}.json").write_text(json.dumps(rec))
    (tmp_path / "curves.json").write_text(json.dumps({"not": "a record"}))
    other = {**base, "train_command": "featlab train --method pgd_at --epochs 1 --out runs/short", "attack": "pgd40",
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
                                           "detail": "pgd40 39.9% > pgd10 30.9% at eps 0.35"}]}
    base = {"dataset": "mnist", "model": "m", "method": "pgd_at", "norm": "linf", "n_eval": 1000, "clean_acc": 99.0,
            "train_command": "featlab train --classifier-run runs/base --out runs/mine", "sanity": sanity,
            "command": "featlab eval --run runs/mine --eps 0.3 0.35", "threat_model": "white-box"}
    recs = [{**base, "eps": 0.35, "attack": "fgsm", "robust_acc": 11.3},
            {**base, "eps": 0.35, "attack": "pgd40", "robust_acc": 39.9},
            {**base, "eps": 0.35, "attack": "pgd40", "robust_acc": 30.0, "n_eval": 500},
            {**base, "eps": 0.35, "threat_model": "oblivious", "attack": "pgd40 then denoised", "robust_acc": 5.0},
            {**base, "eps": 0.35, "threat_model": "none", "attack": "pgd40", "robust_acc": 0.0},
            {**base, "eps": 0.3, "attack": "pgd40", "robust_acc": 95.0},
            {**base, "eps": 0.3000001, "attack": "autoattack", "robust_acc": 93.0, "n_eval": 500},
            {**base, "eps": 1.0, "attack": "pgd40", "robust_acc": 0.0}]     # the checklist's large-eps point
    w03, w035 = featlab.results.worst_case(recs)
    assert w035["run"] == "mine", "the run is the --out folder, not the classifier it was trained against"
    assert (w035["worst"], w035["worst_attack"], w035["worst_n"]) == (11.3, "fgsm", 1000), "oblivious/none never count"
    assert w035["attacks"]["pgd40"] == (30.0, 500), "per attack, its lowest evaluation"
    assert w035["attacks"]["oblivious pgd40"] == (5.0, 1000)
    assert w035["sanity"] == "FAIL", "the records' own checklist failed at 0.35"
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



def test_pgd_far_above_the_ensemble_is_flagged():
    """Check 11: PGD more than gap_tol points above APGD/AutoAttack means PGD's gradient is unreliable (the
    residual denoiser's clamp: end-to-end PGD-40 19.8% against AutoAttack 0.8% on the whole pipeline)."""
    rows = _rows({0.3: 94.0}, "pgd40") + _rows({0.3: 88.6}, "autoattack")
    assert {c["check"]: c["passed"] for c in checklist(rows)}["PGD not far weaker than autoattack"]
    rows = _rows({0.3: 30.0}, "pgd40") + _rows({0.3: 5.0}, "apgd")
    checks = {c["check"]: c for c in checklist(rows)}
    assert not checks["PGD not far weaker than apgd"]["passed"] and "report apgd" in checks["PGD not far weaker than apgd"]["detail"]
    pipe = [{"threat_model": "end-to-end", "attack": "pgd40", "eps": 0.3, "robust_acc": 19.8},
            {"threat_model": "oblivious", "attack": "pgd40", "eps": 0.3, "robust_acc": 97.0},
            {"threat_model": "end-to-end", "attack": "autoattack", "eps": 0.3, "robust_acc": 0.8}]
    checks = {c["check"]: c["passed"] for c in checklist(pipe, n=1000)}
    assert checks["end-to-end autoattack <= end-to-end PGD"] and not checks["end-to-end PGD not far weaker than end-to-end autoattack"]
    assert {c["check"]: c["passed"] for c in checklist(pipe, n=1000, gap_tol=20.0)}[
        "end-to-end PGD not far weaker than end-to-end autoattack"]



def test_square_through_the_pipeline_is_compared_with_gradient_only_attacks():
    """Check 10, as check 8: Square is compared with the attacks that use gradients only (PGD, APGD), not with
    AutoAttack, which holds Square itself; a Square far below end-to-end PGD fails even when AutoAttack is
    as low (the ensemble's number came from its gradient-free member)."""
    pipe = [{"threat_model": "end-to-end", "attack": "pgd40", "eps": 0.3, "robust_acc": 90.0},
            {"threat_model": "end-to-end", "attack": "autoattack", "eps": 0.3, "robust_acc": 70.0},
            {"threat_model": "end-to-end", "attack": "square100", "eps": 0.3, "robust_acc": 70.0}]
    checks = {c["check"]: c["passed"] for c in checklist(pipe)}
    assert not checks["gradient-free end-to-end square100 not stronger than gradient attacks through the pipeline"]
    pipe[0]["robust_acc"] = 70.0
    assert all(c["passed"] for c in checklist(pipe))


def test_details_write_eps_in_the_datasets_unit():
    """On CIFAR-10 a failed check names 8/255, as the reader set it, not 0.0313725; L2 stays a number."""
    e = 8 / 255
    rows = _rows({e: 50.0}) + _rows({e: 30.0}, "square") + _rows({2 / 255: 40.0, e: 45.0}, "pgd10")
    rows += [{"attack": "pgd40_l2", "eps": 0.5, "norm": "l2", "robust_acc": 60.0},
             {"attack": "pgd40_l2", "eps": 1.0, "norm": "l2", "robust_acc": 65.0}]
    details = " ".join(c["detail"] for c in checklist(rows, dataset="cifar10") if not c["passed"])
    assert "at eps 8/255" in details and "at eps 2/255" in details and "0.0313" not in details
    assert "at eps 0.5 -> 65.0% at eps 1" in details          # the L2 curve: its own unit
    plain = " ".join(c["detail"] for c in checklist(rows) if not c["passed"])
    assert "at eps 0.0313725" in plain and "/255" not in plain
    with pytest.raises(ValueError, match="dataset"):
        checklist(rows, dataset="imagenet")


def test_a_failure_named_in_the_datasets_unit_counts_at_that_eps_only():
    """CIFAR-10 records written with checklist(dataset="cifar10") name "8/255": the summary's sanity
    column still finds the failure at 8/255, and not at 2/255."""
    e8, e2 = 8 / 255, 2 / 255
    failed = checklist(_rows({e2: 50.0, e8: 20.0}) + _rows({e2: 49.0, e8: 5.0}, "square"), dataset="cifar10")
    sanity = {"passed": all(c["passed"] for c in failed), "checks": failed}
    assert not sanity["passed"] and "at eps 8/255" in str(failed)
    base = {"dataset": "cifar10", "model": "m", "method": "pgd_at", "norm": "linf", "n_eval": 1000, "clean_acc": 80.0,
            "train_command": "featlab train --out runs/c", "sanity": sanity, "threat_model": "white-box",
            "command": f"featlab eval --run runs/c --eps {e2} {e8}"}
    recs = [{**base, "eps": e2, "attack": "pgd40", "robust_acc": 50.0},
            {**base, "eps": e8, "attack": "pgd40", "robust_acc": 20.0}]
    at = {round(w["eps"] * 255): w["sanity"] for w in featlab.results.worst_case(recs)}
    assert at == {8: "FAIL", 2: "pass"}
    # an L2 eps of 1 is not the Linf "1/255" of a failed check
    one = {**sanity, "checks": [{"check": "c", "passed": False, "detail": "square 5.0% < pgd40 9.0% at eps 1/255"}]}
    l2 = [{**base, "sanity": one, "norm": "l2", "eps": 1.0, "attack": "pgd40_l2", "robust_acc": 50.0,
           "command": "featlab eval --run runs/c --eps 1.0"}]
    assert featlab.results.worst_case(l2)[0]["sanity"] == "pass"


def test_attack_table_puts_methods_side_by_side_on_the_same_images():
    base = {"dataset": "mnist", "model": "m", "norm": "linf", "n_eval": 1000, "threat_model": "white-box",
            "clean_acc": 99.0, "epochs": 8, "command": "featlab eval --eps 0.3"}
    recs = []
    for run, method, accs in (("a", "afd", {"pgd40": 97.0, "apgd": 93.5, "autoattack": 92.8}),
                              ("p", "pgd_at", {"pgd40": 97.3, "apgd": 94.8, "square": 93.9}),
                              ("few", "trades", {"pgd40": 96.0, "apgd": 90.0})):       # two attacks: left out
        recs += [{**base, "method": method, "train_command": f"featlab train --out runs/{run}", "eps": 0.3,
                  "attack": k, "robust_acc": v} for k, v in accs.items()]
    recs.append({**recs[0], "n_eval": 500, "robust_acc": 1.0})              # other images: not in this table
    recs.append({**recs[0], "eps": 1.0, "attack": "pgd100", "robust_acc": 0.0, "role": "checklist large-eps point"})
    table = featlab.results.attack_table(recs, "mnist", 0.3, 1000).splitlines()
    assert table[0] == "| run | method | epochs | clean | pgd40 | apgd | square | autoattack | sanity |"
    assert table[2] == "| a | afd | 8 | 99.0 | 97.0 | 93.5 |  | 92.8 | not run |"
    assert table[3] == "| p | pgd_at | 8 | 99.0 | 97.3 | 94.8 | 93.9 |  | not run |"
    assert len(table) == 4
    assert featlab.results.attack_table(recs, "mnist", 0.1, 1000) == ""


def test_one_eps_written_two_ways_is_checked_as_one():
    base = {"dataset": "cifar10", "model": "m", "method": "pgd_at", "norm": "linf", "n_eval": 1000, "seed": 0,
            "threat_model": "white-box", "clean_acc": 80.0, "train_command": "featlab train --out runs/c",
            "command": "featlab eval --run runs/c --eps 0.0313725"}
    recs = [{**base, "eps": 0.0313725, "attack": "apgd", "robust_acc": 45.0},
            {**base, "eps": 8 / 255, "attack": "square", "robust_acc": 20.0}]
    assert featlab.results.worst_case(recs)[0]["sanity"].startswith("FAIL (checked together: gradient-free square")


def test_pgd_with_the_same_effort_and_another_step_is_not_a_more_steps_pair():
    """pgd40 and pgd40@0.01 both take 40 steps: which is lower says nothing about effort, in either order."""
    for order in (("pgd40", "pgd40@0.01"), ("pgd40@0.01", "pgd40")):
        rows = [{"attack": a, "eps": 0.3, "robust_acc": acc} for a, acc in zip(order, (90.0, 93.0))]
        assert not any("more PGD steps" in c["check"] for c in checklist(rows)), order
    rows = [{"attack": "pgd10", "eps": 0.3, "robust_acc": 90.0}, {"attack": "pgd40@0.01", "eps": 0.3, "robust_acc": 93.0},
            {"attack": "pgd40", "eps": 0.3, "robust_acc": 89.0}]
    (c,) = [c for c in checklist(rows) if "more PGD steps" in c["check"]]
    assert not c["passed"] and "pgd40@0.01 93.0% > pgd10 90.0%" in c["detail"] and "pgd40 89" not in c["detail"]


def test_attacks_of_separate_calls_on_the_same_images_are_checked_together():
    """Each featlab eval call checks its own attacks only; a Square run on its own passes. The summary
    checks the calls on the same images together: Square far below APGD there is gradient masking."""
    ok = {"passed": True, "checks": [{"check": "input gradients exist", "passed": True, "detail": "ok"}]}
    base = {"dataset": "mnist", "model": "m", "method": "afd", "norm": "linf", "n_eval": 1000, "seed": 0,
            "threat_model": "white-box", "clean_acc": 99.5, "eps": 0.35, "sanity": ok,
            "train_command": "featlab train --out runs/a", "command": "featlab eval --run runs/a --eps 0.35"}
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
    assert featlab.results.worst_case([{**apgd, "sanity": failed}, square])[0]["sanity"] == "FAIL"
    # records without a checklist of their own are still checked together
    bare = [{k: v for k, v in r.items() if k != "sanity"} for r in (apgd, square)]
    assert featlab.results.worst_case(bare)[0]["sanity"].startswith("FAIL (checked together")
    assert featlab.results.worst_case(bare[:1])[0]["sanity"] == "not run"


def test_published_table_puts_our_runs_under_the_published_numbers():
    base = {"dataset": "cifar10", "model": "m", "method": "pgd_at", "norm": "linf", "seed": 0, "threat_model": "white-box",
            "train_command": "featlab train --out runs/fast", "command": "featlab eval --run runs/fast",
            "wall_s": 1.0, "device": "cpu", "commit": "c"}
    recs = [{**base, "eps": 0.0313725, "attack": "pgd20", "n_eval": 1000, "clean_acc": 78.1, "robust_acc": 43.4},
            {**base, "eps": 8 / 255, "attack": "autoattack", "n_eval": 200, "clean_acc": 79.0, "robust_acc": 40.5},
            {**base, "eps": 1.0, "attack": "pgd20", "n_eval": 5000, "clean_acc": 1.0, "robust_acc": 0.0,
             "role": "checklist large-eps point"},
            {**base, "train_command": "featlab train --method denoiser --out runs/den", "threat_model": "end-to-end",
             "eps": 8 / 255, "attack": "pgd20", "n_eval": 1000, "clean_acc": 90.0, "robust_acc": 5.0}]
    lines = featlab.results.published_table(recs, "cifar10").splitlines()
    assert any("| RobustBench | Fast-AT PreActResNet-18 | 83.34 | - | 43.21 (full test set) |" in line for line in lines)
    (ours,) = [line for line in lines if line.startswith("| featlab |")]
    assert ours == "| featlab | fast | 78.10 (1000) | - | **40.50** (200) | 40.50 (autoattack, 200) | not run |", \
        "clean of the largest evaluation at 8/255 (not the large-eps point); a denoiser has no white-box row"
    assert featlab.results.published_table(recs, "cifar10", eps=4 / 255) == "", "nothing published at 4/255"
    assert featlab.results.published_table([{**r, "dataset": "cifar100"} for r in recs], "cifar100") == ""
    alone = featlab.results.published_only_table("cifar10").splitlines()      # no run of ours: the published rows
    assert alone == lines[:len(alone)] and len(alone) == len(lines) - 1
    assert featlab.results.published_only_table("cifar100") == ""
    assert featlab.results.published_table([{**recs[0], "attack": "fgsm"}], "cifar10").splitlines()[-1].split(" | ")[4] \
        == "not run"
    shipped = featlab.pretrained.info("cifar_airnet_fast_at")["train_command"]
    md = featlab.results.render([{**r, "train_command": shipped} for r in recs[:2]])
    assert "## cifar10: next to the published numbers at eps 8/255" in md
    assert "cifar_airnet_fast_at (shipped: `cifar_airnet_fast_at`)" in md
    # shipped_only keeps the runs a reader met in the notebooks: the experimental run "fast" is left out
    assert featlab.results.published_table(recs, "cifar10", shipped_only=True) == ""
    mixed = recs[:2] + [{**r, "train_command": shipped} for r in recs[:2]]
    rows = [line for line in featlab.results.published_table(mixed, "cifar10", shipped_only=True).splitlines()
            if line.startswith("| featlab |")]
    assert len(rows) == 1 and "(shipped: `cifar_airnet_fast_at`)" in rows[0]
