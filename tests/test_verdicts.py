"""The verdict rules: a tie within binomial noise, ranking by the worst case, a SUSPECT settled by a
gradient-free attack or BPDA already run, every number with its n."""
from __future__ import annotations

import pytest

from featlab.verdicts import Measurement as M, Status, compare, judge, noise_band, rank, ranking_text, tie, wilson

FAILED = [{"check": "end-to-end at least as strong as BPDA", "passed": False, "detail": "..."}]


def test_one_image_of_300_is_a_tie_and_a_wide_gap_is_not():
    # notebook 02's old verdict: "better" at 97.7 vs 97.3 on 300 images (one image)
    assert tie(M("pgd", 97.7, 300), M("pgd", 97.3, 300))
    assert "a tie" in compare("feature", M("pgd", 97.7, 300), "pixel", M("pgd", 97.3, 300))
    # 35.0 vs 10.0 on 100 images each is far outside the noise (about +-11 points)
    assert not tie(M("square", 35.0, 100), M("square", 10.0, 100))
    assert compare("pixel", M("square", 35.0, 100), "feature", M("square", 10.0, 100)).startswith("pixel 35.0% (n=100) is above")
    # the same 5-point gap is a tie on 100 images and not on 10,000
    assert tie(M("a", 50.0, 100), M("a", 45.0, 100)) and not tie(M("a", 50.0, 10000), M("a", 45.0, 10000))


def test_every_number_is_printed_with_its_n():
    v = judge("denoiser", M("clean", 97.0, 300), [M("oblivious", 90.0, 300), M("end-to-end", 2.0, 100),
                                                  M("bpda", 5.0, 100)], eps_text="0.3")
    text = str(v)
    assert "97.0% (n=300)" in text and "2.0% (n=100)" in text and "90.0% (n=300)" in text
    assert "on 300 test images" not in text


def test_the_worst_case_over_attacks_that_see_the_defense_decides_never_the_oblivious_number():
    v = judge("denoiser", M("clean", 97.0, 300), [M("oblivious", 90.0, 300), M("end-to-end", 2.0, 100)])
    assert v.worst.attack == "end-to-end" and v.status is Status.OBLIVIOUS_ONLY
    binar = judge("binarize", M("clean", 98.0, 300), [M("oblivious", 60.0, 300), M("end-to-end square", 56.0, 100)])
    # ranked by the worst case: binarisation (56.0 under Square) above the denoiser (2.0), whatever the oblivious says
    assert [g[0].name for g in rank([v, binar])] == ["binarize", "denoiser"]
    with pytest.raises(ValueError, match="measurements"):
        judge("x", M("clean", 90.0, 10), [M("oblivious", 80.0, 10)])


def test_ties_share_a_rank():
    a = judge("A", M("clean", 99.0, 500), [M("autoattack", 91.2, 500)])
    b = judge("B", M("clean", 99.0, 500), [M("autoattack", 90.8, 500)])
    c = judge("C", M("clean", 99.0, 500), [M("autoattack", 60.0, 500)])
    groups = rank([c, b, a])
    assert [[v.name for v in g] for g in groups] == [["A", "B"], ["C"]]
    assert ranking_text([a, b, c]).splitlines()[0].endswith("(tied: within binomial noise)")
    # ties do not chain: 5.0% and 0.0% do not tie, 1.0% ties with both; a place holds what ties its best
    five, one, zero = (judge(n, M("clean", 99.0, 100), [M("apgd-ce", acc, k)])
                       for n, acc, k in (("five", 5.0, 100), ("one", 1.0, 100), ("zero", 0.0, 200)))
    assert not tie(five.worst, zero.worst) and tie(five.worst, one.worst) and tie(one.worst, zero.worst)
    assert [[v.name for v in g] for g in rank([zero, one, five])] == [["five", "one"], ["zero"]]
    # notebook 03's CIFAR-10 case: 38.4, 35, 28, 18, 10 (n=100 but the first): no single place from 38.4 to 10
    ladder = [judge(f"m{acc}", M("clean", 90.0, 100), [M("pgd", acc, 500 if acc == 38.4 else 100)])
              for acc in (38.4, 35.0, 28.0, 18.0, 10.0)]
    groups = rank(ladder)
    assert len(groups) >= 3 and all(tie(g[0].worst, v.worst) for g in groups for v in g)
    assert all(not tie(g[0].worst, h[0].worst) for g, h in zip(groups, groups[1:]))
    # a SUSPECT's worst case is an upper bound: the ranking line says its place may be lower
    suspect = judge("planted", M("clean", 98.0, 500), [M("pgd10", 91.0, 500)], checks=FAILED)
    first = ranking_text([a, suspect, c]).splitlines()[0]
    assert "planted 91.0% (n=500) (pgd10; SUSPECT: an upper bound" in first and "A 91.2%" in first
    assert "SUSPECT" not in ranking_text([a, b, c])


def test_a_suspect_is_settled_by_a_gradient_free_attack_or_bpda_already_run():
    open_case = judge("planted", M("clean", 98.0, 60), [M("pgd10", 90.0, 60)], checks=FAILED)
    assert open_case.status is Status.SUSPECT and "upper bound" in str(open_case)
    assert "the checks pass" not in str(open_case)
    settled = judge("planted", M("clean", 98.0, 60), [M("pgd10", 90.0, 60), M("square1000", 0.0, 60)], checks=FAILED)
    assert settled.status is Status.NOT_ROBUST and settled.settled_by.attack == "square1000"
    assert "upper bound" not in str(settled) and "square1000 0.0% (n=60)" in str(settled)
    # a short Square that breaks the defense still shows it is not robust; it just settles nothing
    short = judge("planted", M("clean", 98.0, 60), [M("pgd10", 90.0, 60), M("square100", 0.0, 60)], checks=FAILED)
    assert short.status is Status.NOT_ROBUST and short.settled_by is None and "already below the floor" in str(short)
    bits4 = judge("bits4", M("clean", 97.0, 100), [M("end-to-end", 40.0, 100), M("bpda", 30.0, 100)], checks=FAILED)
    assert bits4.status is Status.PARTLY and bits4.settled_by.attack == "bpda"


def test_statuses_follow_the_numbers():
    assert judge("s", M("clean", 99.0, 100), [M("pgd40", 0.0, 100)]).status is Status.NOT_ROBUST
    assert judge("p", M("clean", 80.0, 100), [M("pgd40", 40.0, 100)]).status is Status.PARTLY
    assert judge("r", M("clean", 99.0, 100), [M("pgd40", 93.0, 100)]).status is Status.ROBUST
    # relative to clean: a weak model that has little to lose is not called robust
    assert judge("weak2", M("clean", 27.0, 100), [M("pgd10", 18.0, 100)]).status is Status.PARTLY
    # 12% of 100 images: its interval (5.6-18.4) reaches below the 10% floor, so no robustness claim
    weak = judge("weak", M("clean", 34.0, 100), [M("pgd10", 12.0, 100)])
    assert weak.status is Status.NOT_ROBUST and "reaches below the 10% floor" in str(weak)
    assert judge("weak", M("clean", 34.0, 2000), [M("pgd10", 12.0, 2000)]).status is Status.PARTLY


def test_a_status_is_read_from_the_interval_so_tied_numbers_near_a_line_share_it():
    # notebook 05's old case: 10.0% and 6.0% of 50 images are a tie, but got "partly robust" and another status
    a = judge("a", M("clean", 98.0, 50), [M("end-to-end", 10.0, 50)])
    b = judge("b", M("clean", 98.0, 50), [M("end-to-end", 6.0, 50)])
    assert tie(a.worst, b.worst) and a.status is b.status is Status.NOT_ROBUST
    # Wilson score intervals: 5 of 50 is 4.35-21.36 (the textbook value), 0 of 50 is 0-7.13, not a point
    assert M("x", 10.0, 50).interval == pytest.approx((4.348, 21.360), abs=1e-3)
    assert M("x", 0.0, 50).interval == pytest.approx((0.0, 7.135), abs=1e-3)
    assert M("x", 100.0, 50).interval == pytest.approx((92.865, 100.0), abs=1e-3)
    # ROBUST needs the whole interval above 75% of clean: 80 of 100 at clean 99 (74.25) is only partly robust
    assert judge("r", M("clean", 99.0, 100), [M("autoattack", 80.0, 100)]).status is Status.PARTLY
    assert judge("r", M("clean", 99.0, 1000), [M("autoattack", 80.0, 1000)]).status is Status.ROBUST
    assert "95% interval" in str(a)


def test_a_verdict_from_gradient_attacks_alone_says_so():
    live = judge("AFD", M("clean", 99.0, 200), [M("pgd20", 90.0, 200), M("fgsm", 95.0, 200)])
    assert live.status is Status.ROBUST and live.gradient_only
    assert live.status_text == "robust under gradient attacks only (an upper bound)" and "upper bound" in str(live)
    full = judge("AFD", M("clean", 99.0, 200), [M("pgd20", 90.0, 200), M("autoattack", 89.0, 200)])
    assert not full.gradient_only and full.status_text == "robust" and "upper bound" not in str(full)


def test_the_settled_sentence_names_the_attack_that_decides():
    # Square settles the failed check, but APGD-CE is lower: the sentence must name APGD-CE as the worst case
    v = judge("den", M("clean", 98.0, 100), [M("end-to-end apgd-ce", 20.0, 100), M("end-to-end square5000", 40.0, 100)],
              checks=FAILED)
    assert v.worst.attack == "end-to-end apgd-ce" and v.settled_by.attack == "end-to-end square5000"
    assert "the worst case, end-to-end apgd-ce 20.0% (n=100), is lower still" in str(v)
    w = judge("den", M("clean", 98.0, 100), [M("end-to-end apgd-ce", 60.0, 100), M("end-to-end square5000", 40.0, 100)],
              checks=FAILED)
    assert "and it is the worst case" in str(w)


@pytest.mark.parametrize("bad", [dict(acc=101.0), dict(acc=-1.0), dict(n=0), dict(attack="")])
def test_a_malformed_measurement_is_refused_by_name(bad):
    kw = dict(attack="pgd", acc=50.0, n=10) | bad
    with pytest.raises(ValueError, match=rf"^{next(iter(bad))}"):
        M(**kw)


def test_the_headline_has_one_row_per_shipped_model_with_its_n():
    from pathlib import Path

    import featlab
    from featlab import results
    recs = results.load(Path(__file__).resolve().parent.parent / "results")
    rows = {r["name"]: r for r in results.headline(recs)}
    assert set(rows) == set(featlab.pretrained.available())
    # the committed numbers decide: the shipped CIFAR-10 AFD is not robust (AutoAttack 0.0 on 200), Fast-AT partly
    assert rows["cifar_airnet_afd"]["verdict"].status is Status.NOT_ROBUST
    assert rows["cifar_airnet_afd"]["autoattack"] == (0.0, 200)
    assert rows["cifar_airnet_fast_at"]["verdict"].status is Status.PARTLY
    # a denoiser is judged by the attacks that see it, never by its oblivious number
    den = rows["cifar_airnet_denoiser_feature"]["verdict"]
    assert den.status is Status.OBLIVIOUS_ONLY and den.worst.attack.startswith("end-to-end") and den.oblivious.acc > 40
    table = results.headline_table(recs)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "| cifar_airnet_afd | cifar10 | 8/255 | 80.5 (200) | 0.0 (200) |" in table


def test_committed_verdicts_are_the_headlines_named_by_model_and_name_their_failed_checks(tmp_path):
    from pathlib import Path

    from featlab import results
    rdir = Path(__file__).resolve().parent.parent / "results"
    mnist = results.committed_verdicts(rdir, "mnist")
    assert mnist == results.committed_verdicts(dataset="mnist"), "default: results/ beside the package"
    assert mnist and all(name.startswith("mnist_") for name in mnist)
    assert mnist["mnist_resnet_pgd_at"].worst.acc == 93.9 and mnist["mnist_resnet_pgd_at"].worst.n == 1000
    # the shipped AFD's failed check is named, so a notebook can say which one the committed Square settles
    assert mnist["mnist_resnet_afd"].failed_checks == (
        "committed checklist: gradient-free square not stronger than gradient attacks",)
    assert results.committed_verdicts(rdir, "mnist", eps=0.2) == {}, "the committed verdicts are at 0.3 only"
    assert results.committed_verdicts(rdir, "mnist", eps=0.3 + 1e-12) == mnist
    assert results.committed_verdicts(tmp_path / "absent", "mnist") == {}, "Colab: no results/ folder"
    assert "its failed check (gradient-free square not stronger than gradient attacks) is settled by square" in \
        results.headline_table(results.load(rdir), "mnist")


def test_a_short_square_settles_nothing_and_a_number_it_decides_is_an_upper_bound():
    # notebook 05's live AFD: dead gradients fail a check; a 200-query Square on 50 images cannot settle it
    live = judge("afd", M("clean", 99.5, 200), [M("apgd", 88.0, 50), M("square200", 94.0, 50)], checks=FAILED)
    assert M("square200", 94.0, 50).queries == 200 and not M("square200", 94.0, 50).settles_masking
    assert M("committed square", 92.0, 200).settles_masking and M("square5000", 1.0, 9).settles_masking
    assert live.status is Status.SUSPECT and "200 queries only" in str(live) and "upper bound" in str(live)
    # no check failed, but the only gradient-free attack was short: robust, as an upper bound
    clean_checks = judge("at", M("clean", 99.5, 200), [M("apgd", 94.0, 50), M("square200", 96.0, 50)])
    assert clean_checks.status is Status.ROBUST
    assert clean_checks.status_text == "robust (upper bound: Square at 200 queries only)"
    # BPDA settles a failed check, but the worst case is a short Square: the number is an upper bound
    binar = judge("binarize", M("clean", 99.5, 200), [M("bpda pgd10", 81.5, 200), M("end-to-end square500", 63.0, 100)],
                  checks=FAILED)
    assert binar.settled_by.attack == "bpda pgd10" and binar.status is Status.PARTLY
    assert "500-query Square" in str(binar) and binar.status_text.endswith("(upper bound: Square at 500 queries only)")


def test_the_published_comparison_is_computed_from_the_committed_verdicts_with_both_n():
    from featlab import results
    mnist = results.published_comparison("mnist", results.committed_verdicts(dataset="mnist"))
    trades = next(s for s in mnist if s.startswith("TRADES"))
    assert "mnist_resnet_trades's AutoAttack 93.5% (n=1000)" in trades and "92.8% (n=10000)" in trades
    assert "a tie" in trades, "0.7 points apart on n=1000 and n=10000 is within the noise"
    madry_cnn = next(s for s in mnist if "mnist_cnn_pgd_at" in s)
    # a PGD-only number says what it is, and an upper bound above the published number is not ranked against it
    assert "is an upper bound (no AutoAttack committed), so it cannot be ranked" in madry_cnn and "above" not in madry_cnn
    below = judge("mnist_cnn_pgd_at", M("clean", 99.0, 1000), [M("pgd40", 70.0, 1000)])
    assert "an upper bound, and still below" in results.published_comparison("mnist", {"mnist_cnn_pgd_at": below})[0]
    # a made-up verdict far below the published number is reported as below, not as a tie
    low = judge("mnist_resnet_trades", M("clean", 99.0, 1000), [M("autoattack", 80.0, 1000)])
    assert "is above mnist_resnet_trades's AutoAttack 80.0% (n=1000)" in \
        results.published_comparison("mnist", {"mnist_resnet_trades": low})[0]
    assert results.published_comparison("mnist", {}) == []


def test_sign_test_counts_pairs_and_corrects_for_the_number_of_tests():
    from featlab.verdicts import sign_test
    a, b = [0.1] * 16 + [0.9] * 4, [0.5] * 20        # 16 of 20 pairs below: z = (16 - 10) / sqrt(5) = 2.68
    r = sign_test(a, b)
    assert (r.k, r.n) == (16, 20) and abs(r.z - 6 / 5 ** 0.5) < 1e-12
    assert abs(r.z_crit - 1.959964) < 1e-5 and r.significant
    five = sign_test(a, b, tests=5)                   # Bonferroni over five taps: 2.58 to beat
    assert abs(five.z_crit - 2.575829) < 1e-5 and five.significant
    assert not sign_test([0.1] * 15 + [0.9] * 5, b, tests=5).significant    # z 2.24: one test yes, five no
    assert sign_test([0.1] * 15 + [0.9] * 5, b).significant
    assert sign_test(b, a).z < 0                      # the other direction
    for bad in (dict(a=[1.0], b=[1.0, 2.0]), dict(a=[], b=[]), dict(a=[1.0], b=[2.0], tests=0)):
        with pytest.raises(ValueError, match="^(a, b|tests)"):
            sign_test(**bad)


def test_the_tie_rule_is_newcombes_score_interval_and_keeps_its_width_at_zero():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, 56/70 against 48/80: the difference 0.2 has the
    # hybrid score interval 0.0524-0.3339, so the noise on the side of the gap is 20 - 5.24 points
    a, b = M("a", 100 * 56 / 70, 70), M("b", 100 * 48 / 80, 80)
    assert noise_band(a, b) == pytest.approx(20.0 - 5.24, abs=0.01)
    assert noise_band(b, a) == pytest.approx(20.0 - 5.24, abs=0.01) and not tie(a, b)
    # at 0%, acc +- 1.96 standard errors has no width; the score interval does: 0 of 100 against 4 of 100 is
    # within the noise (the 0% could be 3.7% by its own interval), 0 of 1,000 against 4 of 100 is not
    assert wilson(0.0, 100) == pytest.approx((0.0, 3.70), abs=0.01)
    assert tie(M("a", 0.0, 100), M("b", 4.0, 100)) and not tie(M("a", 0.0, 1000), M("b", 4.0, 100))
    assert "noise +-" in compare("a", M("a", 0.0, 1000), "b", M("b", 4.0, 100))
    with pytest.raises(ValueError, match="n"):
        wilson(50.0, 0)


def test_the_verdict_words_are_defined_with_judges_thresholds():
    from featlab.verdicts import words
    text = words(robust_floor=20.0, robust_share=0.5)
    assert all(s.value in text.lower() for s in Status)
    assert "above 50% of the clean" in text and "below 20%" in text and "1,000 queries" in text
    # the thresholds the text states are the ones judge applies: 21% of 2,000 clears a 20% floor, 19% does not
    assert judge("a", M("clean", 90.0, 2000), [M("pgd", 30.0, 2000)], robust_floor=20.0,
                 robust_share=0.5).status is Status.PARTLY
    assert judge("a", M("clean", 90.0, 2000), [M("pgd", 19.0, 2000)], robust_floor=20.0,
                 robust_share=0.5).status is Status.NOT_ROBUST


def test_compare_prints_the_threshold_it_applies_and_never_an_equal_gap_and_band():
    # 35.0 vs 29.2 of 500: the gap (5.80) is just beyond the band (5.79); at one decimal both read 5.8
    text = compare("a", M("a", 35.0, 500), "b", M("b", 29.2, 500))
    assert "is just above" in text and "gap 5.80 points, noise +-5.7" in text
    # 1 of 50 against 0 of 50 is one image: a tie, and the band printed is at least that image (2 points)
    text = compare("a", M("a", 2.0, 50), "b", M("b", 0.0, 50))
    assert "a tie" in text and float(text.rsplit("+-", 1)[1].rstrip(")")) >= 2.0


def test_a_verdict_on_a_shared_subset_keeps_only_the_attacks_that_ran_on_it():
    from featlab.verdicts import on_images
    v = judge("m", M("clean", 99.0, 100), [M("pgd10", 0.0, 100), M("pgd10", 2.5, 40), M("autoattack", 2.5, 40)])
    assert v.worst.n == 100
    w = on_images(v, 40)
    assert w.worst.n == 40 and {m.n for m in w.measurements} == {40} and w.clean == v.clean
    assert on_images(v, 7) is v                                      # nothing ran on 7 images: unchanged
    failed = judge("m", M("clean", 99.0, 100), [M("pgd10", 90.0, 100), M("pgd10", 90.0, 40)],
                   [{"check": "gradients exist", "passed": False}])
    assert on_images(failed, 40).status is Status.SUSPECT and on_images(failed, 40).failed_checks == ("gradients exist",)


def test_the_report_ranks_by_the_worst_case_and_explains_only_failed_checks():
    from featlab.checklist import REGISTRY_OF_CHECKS
    from featlab.verdicts import report
    cid = next(iter(REGISTRY_OF_CHECKS))
    bad = [{"id": cid, "check": "the first check", "passed": False}]
    vs = [judge("den", M("clean", 99.0, 100), [M("oblivious", 90.0, 100), M("end-to-end", 1.0, 100)]),
          judge("masked", M("clean", 99.0, 100), [M("pgd10", 95.0, 100)], bad),
          judge("settled", M("clean", 99.0, 100), [M("pgd10", 96.0, 100), M("square1000", 60.0, 100)], bad)]
    text = report(vs, {"masked": bad, "settled": bad})
    order = [line.split()[1] for line in text.splitlines()[1:4]]
    assert order == ["masked", "settled", "den"]                   # 95, 60, 1: by the worst case
    assert "90.0% (n=100)" in text and "1.0% (n=100)" in text      # oblivious and worst, each with its n
    tail = text.split("Failed checks only")[1]
    assert "  not settled: the worst case is an upper bound:\n    masked: 'the first check'" in tail
    assert "settled by an attack that goes around the gradient:\n    settled: 'the first check' -> square1000 60.0% (n=100) ran" in tail
    assert "den" not in tail
    assert "robust" not in report(vs, statuses=False).split("Failed")[0].replace("defense", "")
    assert text.count(f"    {cid}: ") == 1                           # each failed id explained once
    assert "Every check passed." in report(vs[:1], {}) and "check" not in report(vs[:1])    # none ran: no word


def test_a_tied_worst_case_is_credited_to_the_stronger_attack_not_fgsm():
    v = judge("trades", M("clean", 99.0, 100), [M("fgsm", 97.0, 100), M("pgd10", 97.0, 100), M("pgd20", 97.0, 100)])
    assert v.worst.attack == "pgd10"
    assert judge("t", M("clean", 99.0, 100), [M("fgsm", 96.0, 100), M("pgd10", 97.0, 100)]).worst.attack == "fgsm"


def test_the_report_groups_defenses_with_the_same_failed_checks():
    from featlab.verdicts import report
    bad = [{"id": "x", "check": "the first check", "passed": False}]
    low = [judge(n, M("clean", 99.0, 100), [M("oblivious", 90.0, 100), M("end-to-end", 1.0, 100)], bad)
           for n in ("a", "b")]
    text = report(low, {"a": bad, "b": bad})
    assert "    a, b: 'the first check'" in text and text.count("the first check") == 1
    assert "oblivious" in text.splitlines()[0]
    assert "oblivious" not in report([judge("c", M("clean", 99.0, 100), [M("pgd10", 1.0, 100)])]).splitlines()[0]
    assert "change no verdict" in text


def test_words_defines_only_the_words_used():
    from featlab.verdicts import words
    low = judge("a", M("clean", 99.0, 100), [M("pgd10", 1.0, 100)])
    text = words(used=[low])
    assert Status.NOT_ROBUST.value + ":" in text and "a tie" in text
    assert "\n  " + Status.ROBUST.value + ":" not in text and "SUSPECT" not in text and "under gradient attacks only" not in text
    only_pgd = judge("b", M("clean", 99.0, 100), [M("pgd10", 95.0, 100)])
    assert "under gradient attacks only" in words(used=[only_pgd]) and Status.ROBUST.value + ":" in words(used=[only_pgd])
    assert words() == words(used=None) and all(s.value in words() for s in Status if s is not Status.SUSPECT)
