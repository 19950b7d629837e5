"""featlab.checklist: each registered check fails on its own symptom and passes honest rows; a planted masking is caught."""
import warnings

import pytest

import featlab
from featlab.attacks import BPDA
from featlab.models import Defended
from featlab.defenses import Quantize
from featlab.attacks import GradientMaskingWarning
from featlab.checklist import checklist, report_checks
from featlab.evaluate import audit, sweep
from featlab.metrics import input_gradient_stats, robust_accuracy


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


def test_tolerance_is_at_least_one_image():
    rows = _rows({0.1: 50.0}, "pgd10") + _rows({0.1: 51.6}, "pgd40")     # one image of 60 more
    assert not all(c["passed"] for c in checklist(rows))
    assert all(c["passed"] for c in checklist(rows, n=60))


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
    names = "; ".join(c["check"] for c in failed if not c["passed"])
    assert at == {8: "FAIL: " + names, 2: "pass"}, "the failed check is named, at its eps only"
    assert [c["eps"] for c in failed if not c["passed"]] == [[e8]], "the failure carries its eps as a number"
    # an L2 eps of 1 is not the Linf "1/255" of a failed check
    one = {**sanity, "checks": [{"check": "c", "passed": False, "detail": "square 5.0% < pgd40 9.0% at eps 1/255",
                                 "eps": [1 / 255]}]}
    l2 = [{**base, "sanity": one, "norm": "l2", "eps": 1.0, "attack": "pgd40_l2", "robust_acc": 50.0,
           "command": "featlab eval --run runs/c --eps 1.0"}]
    assert featlab.results.worst_case(l2)[0]["sanity"] == "pass"


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


def test_every_check_is_registered_documented_and_on_the_committed_page():
    from pathlib import Path
    from featlab import checklist as cl
    assert list(cl.CHECK_IDS) == list(cl.REGISTRY_OF_CHECKS) and len(cl.REGISTRY_OF_CHECKS) == 13
    for c in cl.REGISTRY_OF_CHECKS.values():
        assert c.symptom and c.why and c.next and callable(c.run), c.id
    page = (Path(__file__).resolve().parent.parent / "results" / "CHECKLIST.md").read_text()
    assert page == cl.page(), "results/CHECKLIST.md is generated: run `featlab results`"


def test_a_few_percent_dead_gradients_fail_one_image_of_slack_does_not():
    # 13% of images without a gradient (the shipped MNIST AFD, notebook 03) are 13% a gradient attack cannot touch
    stats = lambda d: {"dead_fraction": d, "median_grad_norm": 1.0}
    passed = lambda d, n=None: [c["passed"] for c in checklist([], stats(d), n=n) if c["id"] == "gradients-exist"]
    assert passed(13.0) == [False] and passed(13.0, n=500) == [False]
    assert passed(0.0) == [True] and passed(1.0) == [True]
    assert passed(2.0, n=50) == [True] and passed(4.0, n=50) == [False]     # one image of 50 is 2%


def test_one_images_slack_survives_float32_accuracies():
    """39 of 40 images in float32 is 97.50000238%: Square at 95.0% is exactly one image below, within the slack."""
    pgd, square = 97.50000238418579, 94.9999988079071      # notebook 05's live numbers (39 and 38 of 40, float32)
    assert pgd - 2.5 > square, "in float32, one image below reads as more than one image's slack"
    rows = [{"attack": "pgd20", "eps": 0.3, "robust_acc": pgd, "norm": "linf"},
            {"attack": "square200", "eps": 0.3, "robust_acc": square, "norm": "linf"}]
    c = next(c for c in checklist(rows, n=40) if c["id"] == "gradient-free")
    assert c["passed"], c
    rows[1]["robust_acc"] = 92.5                   # two images below: a failure
    assert not next(c for c in checklist(rows, n=40) if c["id"] == "gradient-free")["passed"]


def test_summary_names_the_checks_that_ran_and_thresholds_state_the_slack_checklist_applies():
    from featlab.checklist import ran, summary, thresholds
    rows = [{"attack": a, "eps": e, "robust_acc": acc} for a, e, acc in
            [("fgsm", 0.1, 90.0), ("fgsm", 0.3, 60.0), ("pgd20", 0.1, 85.0), ("pgd20", 0.3, 40.0),
             ("apgd", 0.3, 29.0)]]
    checks = checklist(rows, n=80)
    assert ran(checks) == ", ".join(
        f"{k} x{v}" if v > 1 else k for k, v in
        {i: sum(c["id"] == i for c in checks) for i in dict.fromkeys(c["id"] for c in checks)}.items())
    assert ran(checks).startswith("monotone x2")           # one per curve of two eps or more: fgsm, pgd20
    assert summary(checks, "m", warn=False).startswith(f"m: 1 of {len(checks)} checks FAIL (ran: monotone x2")   # 40 vs 29: 11 points
    text = thresholds(80)
    assert "more than 1.25 points" in text and "up to 10 points" in text and "at most 1.25% of the images" in text
    # the sentence is what checklist applies: 1.25 points of slack pass on n=80, 1.3 do not
    edge = [{"attack": "pgd20", "eps": 0.1, "robust_acc": 50.0}, {"attack": "pgd20", "eps": 0.3, "robust_acc": 51.25}]
    assert checklist(edge, n=80)[0]["passed"] and not checklist(edge[:1] + [dict(edge[1], robust_acc=51.3)], n=80)[0]["passed"]
    assert "more than 1 point;" in thresholds()


def test_slack_is_the_rule_checklist_and_thresholds_apply():
    from featlab.checklist import slack, thresholds
    assert slack(None) == slack(0) == 1.0 and slack(200) == 1.0 and slack(80) == 1.25 and slack(80, 2.0) == 2.0
    assert f"more than {slack(40):.3g} points" in thresholds(40)
    # a gradient check on 40 images: 2.5% dead (one image) passes, 5% (two) fails
    rows = [{"attack": "pgd20", "eps": 0.3, "robust_acc": 50.0}]
    dead = lambda f: next(c for c in checklist(rows, {"dead_fraction": f, "median_grad_norm": 1.0}, n=40)
                          if c["id"] == "gradients-exist")["passed"]
    assert dead(slack(40)) and not dead(5.0)
    for bad in (-1, 2.5, "80", True):
        with pytest.raises(ValueError, match="n must be"):
            slack(bad)
