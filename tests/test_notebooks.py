"""Every notebook runs under papermill with small parameters; the numbers it records are checked."""
import pytest

from featlab import runner

# CI parameters: a smoke run in well under a minute per notebook on a 2-core CPU
CI_PARAMETERS = {
    "01_feature_noise.ipynb": dict(N_IMAGES=100, TRAIN_LIMIT=3000, EPOCHS=1, AT_EPOCHS=1, AT_STEPS=3,
                                   ATTACK_STEPS=10),
    "02_feature_loss_denoiser.ipynb": dict(N_TRAIN=2000, DEMO_TRAIN=256, CLASSIFIER_EPOCHS=1, EPOCHS=1,
                                           EPS_LIST=[0.1, 0.3], N_EVAL=100, ATTACK_STEPS=5, WIDTH=8,
                                           PIPELINE_ATTACKS=["apgd-ce", "square200"], N_PIPELINE=40),
    "03_afd.ipynb": dict(N_TRAIN=6000, EPOCHS=2, ATTACK_STEPS=3, N_EVAL=200, EVAL_STEPS=10, N_PLOT=100, N_PROBE=256,
                         PROBE_STEPS=100),
    "04_attack_explorer.ipynb": dict(TRAIN_LIMIT=2000, EPOCHS=1, AT_EPOCHS=1, AT_STEPS=2, DENOISER_EPOCHS=1,
                                     N_CURVE=60, CURVE_EPS=[0.0, 0.1, 0.3], STATIC_EPS=[0.2], N_ATTRIBUTION=10),
    "05_honest_evaluation.ipynb": dict(N_EVAL=60, EPS_LIST=[0.1, 0.3], ATTACKS=["fgsm", "pgd5", "pgd10"],
                                       AUTOATTACK="fast", AA_N=30, SQUARE_QUERIES=100,
                                       CLASSIFIERS=["mnist_resnet_standard", "mnist_resnet_afd"]),
}

# the same notebooks on CIFAR-10 (DATASET = "cifar10"): live cifar_airnet models on a 1,000-2,000 image subset
CIFAR_CI_PARAMETERS = {
    "01_feature_noise.ipynb": dict(DATASET="cifar10", N_IMAGES=64, TRAIN_LIMIT=2000, EPOCHS=3, AT_EPOCHS=3,
                                   ATTACK_STEPS=5),
    "02_feature_loss_denoiser.ipynb": dict(DATASET="cifar10", N_TRAIN=1000, DEMO_TRAIN=256, CLASSIFIER_EPOCHS=5,
                                           EPOCHS=1, EPS_LIST=[8 / 255], N_EVAL=60, ATTACK_STEPS=5, WIDTH=8,
                                           PIPELINE_ATTACKS=["apgd-ce", "square100"], N_PIPELINE=20),
    "03_afd.ipynb": dict(DATASET="cifar10", N_TRAIN=1500, EPOCHS=2, BATCH_SIZE=50, ATTACK_STEPS=2, N_EVAL=100,
                         EVAL_STEPS=5, N_PLOT=60, N_PROBE=256, PROBE_STEPS=100),
    "04_attack_explorer.ipynb": dict(DATASET="cifar10", TRAIN_LIMIT=2000, EPOCHS=3, AT_EPOCHS=3, DENOISER_EPOCHS=1,
                                     N_CURVE=60, CURVE_EPS=[0.0, 2 / 255, 8 / 255], STATIC_EPS=[8 / 255],
                                     N_ATTRIBUTION=10),
    "05_honest_evaluation.ipynb": dict(DATASET="cifar10", N_EVAL=60, ATTACKS=["fgsm", "pgd5", "pgd10"],
                                       AUTOATTACK="fast", AA_N=30, SQUARE_QUERIES=100),
}
# the shipped CIFAR-10 models each notebook's default (PRETRAINED = True) path loads
CIFAR_SHIPPED = {"01_feature_noise.ipynb": ("cifar_airnet_standard", "cifar_airnet_fast_at"),
                 "02_feature_loss_denoiser.ipynb": ("cifar_airnet_standard", "cifar_airnet_denoiser_feature",
                                                    "cifar_airnet_denoiser_pixel"),
                 "03_afd.ipynb": ("cifar_airnet_standard", "cifar_airnet_fast_at", "cifar_airnet_afd",
                                  "cifar_airnet_l2_afd", "cifar_airnet_pgd_at"),
                 "04_attack_explorer.ipynb": ("cifar_airnet_standard", "cifar_airnet_fast_at",
                                              "cifar_airnet_denoiser_feature"),
                 "05_honest_evaluation.ipynb": ("cifar_airnet_standard", "cifar_airnet_fast_at", "cifar_airnet_afd",
                                                "cifar_airnet_denoiser_feature", "cifar_airnet_pgd_at",
                                                "cifar_airnet_l2_afd")}
EPS_KEYS = {"mnist": ("0.1", "0.2", "0.3"), "cifar10": ("2/255", "4/255", "8/255")}   # featlab.data.format_eps


def _missing_shipped(name):
    import featlab
    return sorted(set(CIFAR_SHIPPED[name]) - set(featlab.pretrained.available()))


def test_every_notebook_has_ci_parameters():
    assert {p.name for p in runner.list_notebooks()} == set(CI_PARAMETERS) == set(CIFAR_CI_PARAMETERS)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("build")
    cache = {}

    def run(name):
        if name not in cache:
            params = dict(CI_PARAMETERS[name])
            if name == "05_honest_evaluation.ipynb":      # a reader's own CNN joins the lineup (USER_MODEL)
                from conftest import MNIST_MEAN, MNIST_STD
                user = request.getfixturevalue("user_cnn")
                params.update(USER_MODEL=f"{user / 'my_cnn.py'}:build", USER_WEIGHTS=str(user / "w.pt"),
                              USER_NORMALIZE=[[MNIST_MEAN], [MNIST_STD]])
            cache[name] = runner.run(runner.NOTEBOOK_DIR / name, out, params, cell_timeout=600)
        return cache[name]
    return run


def check_01(m, pretrained=True):
    assert m["taught/max_abs_diff"] < 1e-6, "the notebook's PGD and featlab.attacks.PGD give the same x_adv"
    assert m["taught/distortion_max_diff"] < 1e-5, "the notebook's relative distortion is featlab.probe's"
    cifar = m["dataset"] == "cifar10"
    robust = "Fast-AT" if cifar else "PGD-AT"
    bar = 35 if cifar and not pretrained else 85
    assert m["clean_acc/standard"] > bar, "the shipped standard model (or one trained on 2,000-3,000 images) is accurate"
    for eps in EPS_KEYS[m["dataset"]]:
        adv = m[f"distortion/standard/eps{eps}/adversarial/embedding"]
        rnd = m[f"distortion/standard/eps{eps}/random-sign/embedding"]
        assert adv > 1.25 * rnd, f"eps {eps}: adversarial {adv:.3f} should exceed random {rnd:.3f} at the deepest tap"
    top = EPS_KEYS[m["dataset"]][-1]
    assert m[f"robust_acc/standard/eps{top}"] < m["clean_acc/standard"]
    if cifar:
        # Fast-AT buys robustness, and flattens the curve at the embedding (even 3 epochs on 2,000 images)
        gain = m[f"robust_acc/{robust}/eps{top}"] - m[f"robust_acc/standard/eps{top}"]
        # shipped: far apart; 3 epochs on 2,000 images, judged on 64: above, but a 5-point bar (3 images) is inside
        # the binomial noise there (seen: 14.1 vs 9.4 on one CPU)
        assert gain > (5 if pretrained else 0), gain
        assert (m[f"distortion/{robust}/eps{top}/adversarial/embedding"]
                < m[f"distortion/standard/eps{top}/adversarial/embedding"])
        assert m["shipped/standard"] is pretrained and m[f"shipped/{robust}"] is pretrained
        if pretrained:
            assert m[f"robust_acc/{robust}/eps{top}"] > 25, "the shipped Fast-AT model is robust at 8/255"


def check_02(m, pretrained=True):
    assert m["taught/threat_model_max_diff"] < 1e-6, "the cell's three attackers are featlab's (PGD on Defended, BPDA)"
    if m["dataset"] == "cifar10":
        return check_02_cifar(m, pretrained)
    assert m["classifier/clean_acc"] > 85
    assert m["by_hand/last_total"] < 0.9 * m["by_hand/first_total"], "20 steps by hand lower the loss"
    for name in ("binarize", "bits4", "median3", "feature loss", "separate extractor", "pixel loss"):
        assert m[f"{name}/clean"] > 50, "every defense keeps most digits readable"
        # an attacker who sees the whole pipeline does at least as well as one who ignores it (up to
        # gradient masking, which the controls show and the checklist flags)
        assert m[f"{name}/bpda/eps0.3"] <= m[f"{name}/oblivious/eps0.3"] + 5
        assert m[f"{name}/none/eps0.3"] < m["classifier/clean_acc"]
    for name in ("feature loss", "separate extractor", "pixel loss"):
        assert m[f"{name}/end-to-end/eps0.3"] <= m[f"{name}/oblivious/eps0.3"] + 5
    # binarisation: its gradient is zero, so end-to-end PGD learns nothing; BPDA does better
    assert m["binarize/bpda/eps0.3"] < m["binarize/end-to-end/eps0.3"]
    # the typed verdicts read the worst case over the attacks that see the defense, never the oblivious number:
    # 4-bit quantisation falls to BPDA, and no learned denoiser is called robust
    assert m["verdict/bits4"] == "not robust" and m["worst/bits4"] < 10
    for name in ("feature loss", "separate extractor", "pixel loss"):
        assert m[f"verdict/{name}"] != "robust", (name, m[f"worst/{name}"])
        assert m[f"worst/{name}"] <= m[f"{name}/end-to-end/eps0.3"]
    assert "transfer/feature loss + ResNet/oblivious" in m
    # section 7: APGD-CE through denoiser + ResNet (first N_PIPELINE images) does at least as well as oblivious PGD (up
    # to the noise of 40 images), and the verdict on the moved denoiser reads it, not the oblivious number
    for label in ("ResNet alone", "feature loss + ResNet", "pixel loss + ResNet"):
        assert m[f"transfer/{label}/end-to-end"] <= m[f"transfer/{label}/oblivious"] + 10, label
        assert m[f"transfer/{label}/verdict"] != "robust", label
    assert m["transfer/ResNet alone/verdict"] == "not robust"
    # 5b's sign test reads the share of images where the feature loss leaves the smaller logit distortion
    share = m["distortion/feature_below_pixel_at_logits"]
    z, z_crit = m["distortion/sign_test_z"]
    assert (z > 0) == (share > 0.5) or share == 0.5
    assert abs(z_crit - 2.575829) < 1e-4, "Bonferroni over the four spatial taps and the logits: 5% / 5 tests"
    # ... and at every spatial tap the feature loss is trained on (the paper's idea tested where it acts)
    words = m["distortion/sign_test_taps"]
    assert set(words) == {"conv1", "pool1", "conv2", "pool2", "logits"}, words     # the metrics file sorts its keys
    assert set(words.values()) <= {"a tie", "feature lower", "pixel lower"}
    assert (words["logits"] == "a tie") == (abs(z) <= z_crit)
    if pretrained:
        # the shipped denoiser removes most oblivious perturbations, and an attacker who sees it wins: the gap
        # between the two threat models, from this run's own numbers
        obl, e2e = m["feature loss/oblivious/eps0.3"], m["feature loss/end-to-end/eps0.3"]
        assert obl > 85 and obl - e2e > 30, (obl, e2e)
        # section 5b's probe: the shipped denoiser removes most of the distortion the attack causes at the logits
        assert m["distortion/feature loss"]["logits"] < 0.5 * m["distortion/no defense"]["logits"]
        assert m["transfer/feature loss + ResNet/oblivious"] > 70, "the denoiser transfers to a classifier it never saw"
        # ... against an attacker who ignores it; one who attacks the whole pipeline wins
        assert m["transfer/feature loss + ResNet/end-to-end"] < m["transfer/feature loss + ResNet/oblivious"] - 30
        assert m["transfer/feature loss + ResNet/verdict"] == "robust only against an oblivious attacker"
        # the shipped denoiser trained for the ResNet itself (its own taps) removes most oblivious perturbations too
        assert m["transfer/feature loss for ResNet + ResNet/oblivious"] > 70


def check_02_cifar(m, pretrained):
    clean = m["classifier/clean_acc"]
    assert clean > (80 if pretrained else 30), "the shipped cifar_airnet (or one trained on 1,000 images) is accurate"
    assert m["shipped/classifier"] is pretrained
    assert m["by_hand/last_total"] < m["by_hand/first_total"], "20 steps by hand lower the loss"
    # with PRETRAINED the shipped feature- and pixel-loss denoisers; the separate extractor is not shipped for
    # CIFAR-10, so it is left out (it trains here only with PRETRAINED = False)
    learned = ("feature loss", "pixel loss") + (() if pretrained else ("separate extractor",))
    assert ("separate extractor/clean" in m) is not pretrained
    for name in ("bits4", "median3") + learned:
        assert m[f"{name}/clean"] > 0.5 * clean, "every defense keeps most images recognisable"
        assert m[f"{name}/bpda/eps8/255"] <= m[f"{name}/oblivious/eps8/255"] + 5
        assert m[f"{name}/none/eps8/255"] < clean
        assert m[f"{name}/pipeline square100/eps8/255"] <= m[f"{name}/clean"]
    for name in learned:
        assert m[f"{name}/end-to-end/eps8/255"] <= m[f"{name}/oblivious/eps8/255"] + 5
    # 4-bit quantisation (steps of 17/255) has a zero gradient: end-to-end PGD learns nothing, BPDA does better
    assert m["bits4/bpda/eps8/255"] < m["bits4/end-to-end/eps8/255"] - 10
    assert "transfer/feature loss + airnet (seed 1)/oblivious" in m
    other = "feature loss + airnet (seed 1)"       # APGD-CE through the whole pipeline, as on MNIST
    assert m[f"transfer/{other}/end-to-end"] <= m[f"transfer/{other}/oblivious"] + 10
    if pretrained:
        # the shipped denoiser (all 50,000 images) removes part of an oblivious perturbation, which bit-depth reduction
        # does not; the median filter comes close at these CI sizes (PGD-5, 60 images: denoiser 50.0, median3 51.7
        # when measured), but costs clean accuracy (1,000 images, PGD-20: oblivious 66.7 vs 38.2, clean 90.6 vs 80.8);
        # an attacker who sees it wins
        obl = m["feature loss/oblivious/eps8/255"]
        assert obl > m["bits4/oblivious/eps8/255"] + 15
        assert m["feature loss/clean"] > max(clean - 10, m["median3/clean"] + 5)
        assert m["feature loss/end-to-end/eps8/255"] < obl - 15
        # the seed paper's idea on CIFAR-10: the pixel-loss twin, same architecture and budget, removes far less of
        # the oblivious perturbation (committed, PGD-20 on 1,000 images: 66.7 vs 5.3)
        assert obl > m["pixel loss/oblivious/eps8/255"] + 20
        assert m["committed/feature loss/worst"][1] == 1000, "the committed numbers are printed beside the live ones"
    else:
        assert not any(k.startswith("committed/") for k in m), "nothing shipped is loaded when PRETRAINED is False"


def check_03_verdicts(m):
    """Section 9's verdicts follow featlab.verdicts' rules: every verdict prints its n, the ranking is by the worst
    case, and a model within binomial noise of the one ranked just above it shares its group. Returns each model's
    rank."""
    from featlab.verdicts import Measurement, tie
    names = [n for group in m["ranking"] for n in group]
    worst = {n: Measurement(m[f"worst/{n}"][2], m[f"worst/{n}"][0], m[f"worst/{n}"][1]) for n in names}
    for n in names:
        assert f"(n={m['n_eval']})" in m[f"verdict/{n}"], m[f"verdict/{n}"]       # the live numbers carry their n
        assert f"{worst[n]}" in m[f"verdict/{n}"]
    order = [worst[n].acc for n in names]
    assert order == sorted(order, reverse=True), "ranked by the worst case, best first"
    for i, group in enumerate(m["ranking"]):
        assert all(tie(worst[group[0]], worst[b]) for b in group[1:]), group      # a place: its best and its ties
        if i + 1 < len(m["ranking"]):
            assert not tie(worst[group[0]], worst[m["ranking"][i + 1][0]]), "each place's best differs beyond the noise"
    return {n: i for i, group in enumerate(m["ranking"]) for n in group}


def check_03(m, pretrained=True):
    # section 1's AFD step written in PyTorch and featlab.train.AFD.step: the same state after one step
    assert m["taught/max_state_diff"] < 1e-6, m["taught/max_state_diff"]
    assert m["taught/discriminator_max_diff"] < 1e-6, "the written-out D is featlab's ProjectionDiscriminator"
    # section 10 shows the committed CIFAR-10 ablation: each row's worst case as results/ holds it
    from pathlib import Path
    from featlab import results
    rows = results.ablation_rows(results.load(Path(__file__).resolve().parent.parent / "results"), "cifar10")
    assert rows and all(m[f"ablation/{r['run']}"] == r["worst"] for r in rows)
    assert rows[0]["worst"] is not None, "the reference-recipe AFD has its AutoAttack record"
    # section 7's n counts the held-out images (a quarter of the probe's), not their clean + adversarial embeddings
    assert m["separability_n"] == round(m["n_probe"] / 4), (m["separability_n"], m["n_probe"])
    if m["dataset"] == "cifar10":
        return check_03_cifar(m, pretrained)
    # the live AFD run learns: an AFD that does not train (or whose game is broken) fails these
    assert m["AFD/clean_acc"] > 70, "the live AFD run classifies clean digits"
    assert m["AFD/pgd_acc"] > m["standard/pgd_acc"] + 10, "AFD is more robust than the standard model"
    assert m["standard/separability"] > 75, "a fresh discriminator separates a standard model's embeddings"
    assert m["standard/centroid_adv"] < m["AFD/centroid_adv"], "AFD keeps adversarial embeddings in their class"
    # section 6, desensitization: under its own attack the standard model's embedding moves further than AFD's, and
    # further than the control's moves than AFD's (the game's effect), beyond the bootstrap interval of the images
    # (seen: 2.8x and 2.9x, intervals from 2.5, at CI sizes on 100 images; 4.1x and 4.2x on 200 at the defaults)
    assert m["distortion/standard/adversarial/embedding"] > m["distortion/AFD/adversarial/embedding"]
    assert m["distortion_cut/AFD"][1] > 1.5, m["distortion_cut/AFD"]
    assert m["distortion_cut/game"][1] > 1.5, m["distortion_cut/game"]
    # section 7: without the game a fresh discriminator separates the embeddings better than with it (seen at CI
    # sizes: 89.8 vs 64.8, n=128)
    assert m["AFD without the game/separability"] > m["AFD/separability"] + 10
    others = ("PGD-AT (shipped)", "TRADES (shipped)") if pretrained else ("PGD-AT", "TRADES")
    for name in others:            # TRADES as well as PGD-AT in section 6's curves and section 7's probe
        assert f"distortion_cut/{name}" in m and f"{name}/separability" in m, name
    for name in ("AFD", "AFD without the game") + others:
        assert m[f"{name}/pgd_acc"] <= m[f"{name}/fgsm_acc"] + 5, f"{name}: PGD is at least as strong as FGSM"
    for name in ("standard", "AFD", "AFD without the game") + others:
        # on a unit-length embedding, an all-zero input gradient needs a constant embedding: one active coordinate or
        # none (probe.embedding_activity); as shares of the same images, the first cannot exceed the second
        if m[f"{name}/normalised"]:
            assert m[f"{name}/dead_grad"] <= m[f"{name}/one_active"] + m[f"{name}/none_active"] + 1, name
    rank = check_03_verdicts(m)
    assert rank["AFD"] < rank["standard"], "AFD ranks above the standard model, beyond the binomial noise"
    assert m["status/standard"] == "not robust", m["verdict/standard"]
    if pretrained:
        for name in others:
            assert m[f"{name}/pgd_acc"] > 50, f"{name} is robust"
        # the shipped AFD's embedding collapses to one coordinate on some test images; PGD-AT's never does
        assert m["AFD (shipped)/one_active"] > m["PGD-AT (shipped)/one_active"] == 0
        # its dead gradients fail the live checklist, and the committed Square run settles it (not SUSPECT)
        assert m["AFD (shipped)/dead_grad"] > 1 and m["status/AFD (shipped)"] == "robust"
        assert "committed square" in m["verdict/AFD (shipped)"] and "already ran" in m["verdict/AFD (shipped)"]
        assert m["worst/AFD (shipped)"][2].startswith("committed ")
        # section 6 puts the committed worst case beside its PGD-only numbers: the one the verdict uses
        assert m["committed_worst/AFD (shipped)"][:2] == m["worst/AFD (shipped)"][:2]
        # section 4 reads the budgets from the recorded commands: TRADES's training attack is not the others'
        attack = {name: m[f"budget/{name}"]["training attack"] for name in others + ("AFD (shipped)",)}
        assert attack["PGD-AT (shipped)"] == attack["AFD (shipped)"] != attack["TRADES (shipped)"], attack


def check_03_cifar(m, pretrained):
    # with the MNIST learning rates the cifar_airnet game diverged to chance (10%): this catches it
    assert m["AFD/clean_acc"] > 15, "the live AFD run learns (the game does not diverge)"
    assert m["standard/clean_acc"] > (80 if pretrained else 25)
    assert m["standard/pgd_acc"] < m["standard/clean_acc"] - 10
    assert m["standard/separability"] > 55, "a fresh discriminator separates a standard model's embeddings"
    assert "AFD without the game/separability" in m and "distortion_cut/game" in m
    others = ("Fast-AT (shipped)", "AFD (shipped)") if pretrained else ("PGD-AT", "TRADES")
    for name in ("AFD", "AFD without the game") + others:
        assert m[f"{name}/pgd_acc"] <= m[f"{name}/fgsm_acc"] + 5, f"{name}: PGD is at least as strong as FGSM"
    at = others[0]          # PGD-AT trained here, or the shipped Fast-AT
    assert m[f"{at}/pgd_acc"] > m["standard/pgd_acc"] + 5, f"{at} is more robust than the standard model"
    # adversarial training desensitizes the embedding: the standard model's moves further under its own attack
    assert m[f"distortion_cut/{at}"][1] > 1, m[f"distortion_cut/{at}"]
    rank = check_03_verdicts(m)
    if pretrained:
        assert rank["Fast-AT (shipped)"] < rank["standard"], "Fast-AT ranks above the standard model"
        assert m["Fast-AT (shipped)/pgd_acc"] > 25, "the shipped Fast-AT model is robust at 8/255"
        # the shipped AFD, on Fast-AT's budget, classifies clean images (how robust it is, section 9 computes and says)
        assert m["AFD (shipped)/clean_acc"] > 50 and "AFD (shipped)/separability" in m
        # the pair on the reference recipe's terms: AFD with a PGD-5 training attack is robust where the one-step one
        # is not (RESULTS.md, PGD-20 on 1,000 images: 30.8 vs 1.9), and PGD-AT with the same training attack and epochs
        # (plain embedding, weight decay 5e-4) more so (42.8)
        ref, twin = "AFD, reference recipe (shipped)", "PGD-AT, same attack (shipped)"
        assert m[f"{ref}/pgd_acc"] > m["AFD (shipped)/pgd_acc"] + 10, (m[f"{ref}/pgd_acc"], m["AFD (shipped)/pgd_acc"])
        assert m[f"{twin}/pgd_acc"] > 20 and m[f"{ref}/pgd_acc"] <= m[f"{ref}/fgsm_acc"] + 5


def check_04(m, pretrained=True):
    cifar = m["dataset"] == "cifar10"
    robust = "Fast-AT" if cifar else "PGD-AT"
    den = "denoiser + standard"
    assert m["taught/ig_max_diff"] < 1e-4, "the notebook's Integrated Gradients is captum's (the explorer's map)"
    std = m["success/standard"]
    assert std[0] == 0 and std[-1] >= std[1] and std[-1] > 50, "success grows with eps on the standard model"
    # where PGD-10 starts to flip the explorer's image: a bracket one slider step wide (None, None where the model
    # misclassifies the image, as a briefly trained live model may), higher for the shipped robust model
    survived, flipped = m["flip/standard"]
    if flipped is not None:
        assert survived is not None and 0 < flipped - survived < 0.011, m["flip/standard"]
        if pretrained:
            assert m[f"flip/{robust}"][1] is None or m[f"flip/{robust}"][1] > flipped, m[f"flip/{robust}"]
    else:
        assert survived is None or survived >= 0.06, m["flip/standard"]      # misclassified, or never flipped
    assert set(m) >= {f"success/{robust}", f"success/{den}", f"success/{den} (oblivious)",
                      "success/random noise on standard", "ig_grey_similarity/standard"}
    for name in ("standard", robust, den):     # every rate carries its n: the images the model classified correctly
        assert 0 < m[f"success_n/{name}"] <= m["n_curve"]
    assert m["success_n/random noise on standard"] == m["success_n/standard"], "the control runs on the same images"
    # the control: random noise of the same size flips far fewer of the standard model's images than PGD
    assert m["success/random noise on standard"][-1] < std[-1] - 20
    # the attacker who sees the denoiser does at least as well as the one who ignores it (up to noise)
    assert all(e2e >= obl - 10 for e2e, obl in zip(m[f"success/{den}"], m[f"success/{den} (oblivious)"]))
    # the explorer's denoiser panel is not empty: the pipeline's taps, the denoiser's output among them
    assert {"input", "denoised", "logits"} <= set(m[f"distortion/{den}"]) and m[f"distortion/{den}"]["input"] > 0
    if pretrained:       # which denoiser stood in front of the standard model, recorded
        assert m["denoiser"] == ("cifar_airnet_denoiser_feature" if cifar else "mnist_denoiser_feature")
        assert m[f"success/{den}"][-1] > m[f"success/{den} (oblivious)"][-1] + 15, "end-to-end beats oblivious"
    else:
        assert m["denoiser"].startswith("residual, trained here")
    if cifar:
        assert m[f"success/{robust}"][-1] < std[-1] - 20, "Fast-AT resists the attack that fools the standard model"
        assert m["shipped/standard"] is pretrained
    else:
        if pretrained:
            assert m[f"success/{robust}"][-1] < std[-1] - 50, "PGD-AT resists the attack that fools the standard model"
        # the black baseline gives (nearly) black pixels no attribution by construction; the grey one does not
        assert m["dark_pixels"] > 0.5
        assert m["ig_black_dark_share/standard"][0] < 0.05 < 0.1 < m["ig_grey_dark_share/standard"][0]


CHECKS = {"01_feature_noise.ipynb": check_01, "02_feature_loss_denoiser.ipynb": check_02,
          "03_afd.ipynb": check_03, "04_attack_explorer.ipynb": check_04}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_defaults(executed, name):
    """The default path: the shipped pretrained models (plus the notebook's short live training)."""
    m = executed(name)["metrics"]
    assert m["pretrained"] is True
    CHECKS[name](m)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_trains_from_scratch(tmp_path, name):
    """PRETRAINED = False: the notebook trains every model itself (CI sizes) and still passes its checks."""
    r = runner.run(runner.NOTEBOOK_DIR / name, tmp_path, {**CI_PARAMETERS[name], "PRETRAINED": False},
                      cell_timeout=600)
    assert r["metrics"]["pretrained"] is False, "the notebook read PRETRAINED"
    CHECKS[name](r["metrics"], pretrained=False)


@pytest.mark.slow
@pytest.mark.heavy       # 3-4 min each without native bf16 (cifar_airnet trained live in fp32): `make test-all`
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_cifar_notebook_trains_from_scratch(tmp_path, name):
    """DATASET = "cifar10", PRETRAINED = False: cifar_airnet models trained here on a subset (CI sizes)."""
    r = runner.run(runner.NOTEBOOK_DIR / name, tmp_path, {**CIFAR_CI_PARAMETERS[name], "PRETRAINED": False},
                   cell_timeout=600)
    assert r["metrics"]["dataset"] == "cifar10" and r["metrics"]["pretrained"] is False
    CHECKS[name](r["metrics"], pretrained=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_cifar_notebook_shipped(tmp_path, name):
    """DATASET = "cifar10" on the default path: the shipped cifar_airnet models (once they are shipped)."""
    missing = _missing_shipped(name)
    if missing:
        pytest.skip(f"the shipped CIFAR-10 models {missing} are not in featlab/pretrained yet")
    r = runner.run(runner.NOTEBOOK_DIR / name, tmp_path, CIFAR_CI_PARAMETERS[name], cell_timeout=600)
    assert r["metrics"]["dataset"] == "cifar10" and r["metrics"]["pretrained"] is True
    CHECKS[name](r["metrics"])


@pytest.mark.slow
def test_05_honest_evaluation_cifar(tmp_path):
    name = "05_honest_evaluation.ipynb"
    missing = _missing_shipped(name)
    if missing:
        pytest.skip(f"the shipped CIFAR-10 models {missing} are not in featlab/pretrained yet")
    m = runner.run(runner.NOTEBOOK_DIR / name, tmp_path, CIFAR_CI_PARAMETERS[name], cell_timeout=600)["metrics"]
    std, fast = "cifar_airnet_standard", "cifar_airnet_fast_at"
    assert m["dataset"] == "cifar10"
    assert m["runs_next_to_published"] >= 3, "the three shipped CIFAR-10 classifiers next to Fast-AT's 43.21"
    assert m[f"{std}/clean"] > 80 and m[f"{std}/pgd10"] < 20
    assert m[f"{fast}/clean"] > 60 and m[f"{fast}/pgd10"] > 20, "Fast-AT holds part of its accuracy at 8/255"
    # AFD on Fast-AT's budget: as accurate, far less robust (RESULTS.md: PGD-20 1.9 vs 43.4 on 1,000 images)
    assert m["cifar_airnet_afd/clean"] > 60 and m["cifar_airnet_afd/pgd10"] < m[f"{fast}/pgd10"] - 10
    # AFD on the reference recipe's terms (unit-length embedding, PGD-5 training attack): robust where the one-step
    # AFD is not (RESULTS.md, PGD-20 on 1,000 images: 30.8 vs 1.9)
    assert m["cifar_airnet_l2_afd/pgd10"] > m["cifar_airnet_afd/pgd10"] + 10
    assert m["cifar_airnet_pgd_at/pgd10"] > 20
    for name in (std, fast):
        assert m[f"{name}/square"] <= m[f"{name}/clean"]
        assert m[f"{name}/apgd"] <= m[f"{name}/pgd10_on_aa_images"] + 100 / 30
    # the planted masking on CIFAR-10 (8-bit images too): PGD is fooled, the checklist is not, BPDA breaks it
    assert m["planted/pgd_eps8/255"] > 60 and m["planted/checks_passed"] is False and m["planted/bpda_eps8/255"] < 20
    assert m["planted/square_check_passed"] is False, "Square, which needs no gradient, sees through it"
    for cid in ("monotone", "iterative-vs-fgsm", "gradient-free"):     # the checks written out agree with featlab's
        assert m[f"taught_check/{cid}"][0] == m[f"taught_check/{cid}"][1], cid
    # the checks fail, and BPDA and Square already ran: the verdict is settled, not left SUSPECT
    assert m["verdict/quantized standard (planted)"] == "not robust"
    assert "already ran" in m["verdict_text/quantized standard (planted)"]
    assert m["verdict/cifar_airnet_standard"] == "not robust"
    # the shipped CIFAR-10 denoiser: oblivious PGD is partly undone, PGD through it is not
    den = "cifar_airnet_denoiser_feature"
    assert m[f"{den}/clean"] > 80 and m[f"{den}/oblivious"] > m[f"{den}/end-to-end"] + 15


@pytest.mark.slow
def test_05_honest_evaluation(executed):
    m = executed("05_honest_evaluation.ipynb")["metrics"]
    assert m["mnist_resnet_standard/clean"] > 95 and m["mnist_resnet_standard/pgd10"] < 20
    assert m["mnist_resnet_standard/checks_passed"] is True
    # the shipped AFD model is robust, and AutoAttack is at most PGD on the same images
    assert m["mnist_resnet_afd/clean"] > 95 and m["mnist_resnet_afd/pgd10"] > 80
    for name in ("mnist_resnet_standard", "mnist_resnet_afd"):
        assert m[f"{name}/square"] <= m[f"{name}/clean"]          # Square ran on the classifier
    # the live verdicts, from the numbers with their n: the standard model falls, the AFD model holds
    assert m["verdict/mnist_resnet_standard"] == "not robust"
    # its embedding collapses on some images (notebook 03: dead input gradients on ~13%): the live checklist fails
    # gradients-exist, as 03's does, and a Square of SQUARE_QUERIES (100 here) is too short to settle it: SUSPECT, an
    # upper bound, where the committed evaluation (5,000 queries) says robust
    assert m["mnist_resnet_afd/checks_passed"] is False
    assert m["verdict/mnist_resnet_afd"] == "suspect", m["verdict_text/mnist_resnet_afd"]
    assert "100 queries only" in m["verdict_text/mnist_resnet_afd"]
    # the committed verdict (results/: AutoAttack and Square on 1,000 images) sits beside it
    assert m["committed_verdict/mnist_resnet_afd"] == "robust", "the shipped AFD has committed records at eps 0.3"
    assert m["runs_next_to_published"] >= 5, "the shipped MNIST classifiers sit next to the published numbers"
    for name in ("mnist_resnet_standard", "mnist_resnet_afd"):
        assert m[f"{name}/apgd"] <= m[f"{name}/pgd10_on_aa_images"] + 100 / 30
    # the planted masking: PGD is fooled, the checklist is not, BPDA breaks it
    assert m["planted/pgd_eps0.3"] > 80 and m["planted/checks_passed"] is False and m["planted/bpda_eps0.3"] < 20
    assert m["planted/square_eps0.3"] < m["planted/pgd_eps0.3"] - 30, "Square needs no gradient"
    assert m["planted/square_check_passed"] is False
    # section 1's checks written out agree with featlab.checklist on the planted rows: Square exposes it in both
    for cid in ("monotone", "iterative-vs-fgsm", "gradient-free"):
        assert m[f"taught_check/{cid}"][0] == m[f"taught_check/{cid}"][1], cid
    assert m["taught_check/gradient-free"] == [False, False]
    assert m["verdict/quantized standard (planted)"] == "not robust"
    assert "already ran" in m["verdict_text/quantized standard (planted)"]
    for key in (k for k in m if k.endswith("/end-to-end")):
        assert m[key] <= m[key.replace("end-to-end", "oblivious")] + 5
    # APGD-CE through the shipped denoiser (section 3): an attacker who sees the denoiser wins, one who does not, not
    assert m["mnist_denoiser_feature/end-to-end apgd-ce"] < m["mnist_denoiser_feature/oblivious"] - 30
    # a reader's own CNN (USER_MODEL, wrapped by featlab.models.wrap), trained with its own normalisation: the same
    # attacks, checks and verdict as the shipped models
    assert m["yours/clean"] > 90 and m["yours/pgd10"] < m["yours/clean"]
    assert m["yours/square"] <= m["yours/clean"] and isinstance(m["yours/checks_passed"], bool)
    assert m["verdict/yours"] == "not robust", m["verdict_text/yours"]      # a standard CNN at eps 0.3


def test_check_parameters_names_every_wrong_value():
    from featlab.nbtools import BOOL, Int, ListOf, Number, OneOf, ParameterError, STR, check_parameters
    ok = dict(EPOCHS=2, EPS=0.3, EPS_LIST=[0.1, 0.3], LIMIT=None, DEVICE="auto", FLAG=True, MODE="fast")
    rules = dict(EPOCHS=Int(1), EPS=Number(0, 1), EPS_LIST=ListOf(Number(0, 1)), LIMIT=Int(100, none=True),
                 DEVICE=STR, FLAG=BOOL, MODE=OneOf("fast", "standard"))
    check_parameters(ok, **rules)
    bad = dict(ok, EPOCHS="2", EPS=float("nan"), EPS_LIST=[0.1, 3], FLAG=1, MODE="slow")
    with pytest.raises(ParameterError) as err:
        check_parameters(bad, **rules)
    msg = str(err.value)
    for part in ("EPOCHS = '2': must be an integer >= 1", "EPS = nan", "EPS_LIST = [0.1, 3]", "FLAG = 1: must be True",
                 "MODE = 'slow': must be one of 'fast', 'standard'"):
        assert part in msg, (part, msg)
    assert "LIMIT" not in msg and "DEVICE" not in msg
    with pytest.raises(ParameterError, match="SEED is not set"):
        check_parameters(ok, SEED=Int(0))
    with pytest.raises(ParameterError, match="EPOCHS = True"):        # a bool is not an integer here
        check_parameters(dict(ok, EPOCHS=True), EPOCHS=Int(1))


def test_a_notebook_stops_at_a_bad_parameter_with_its_name(tmp_path):
    """A string where a number belongs: the cell after the parameters says so, before any data loads."""
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as err:
        runner.run(runner.NOTEBOOK_DIR / "03_afd.ipynb", tmp_path, {**CI_PARAMETERS["03_afd.ipynb"],
                                                                         "EPOCHS": "two"}, cell_timeout=120, html=False)
    assert "EPOCHS = 'two': must be an integer >= 1" in str(err.value)
    assert 'recipes.setup(globals(), "03_afd")' in err.value.source      # the setup cell, before any data loads
