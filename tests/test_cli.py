import json

import pytest

from featlab import cli
from conftest import needs_mnist


@needs_mnist
def test_train_eval_probe_roundtrip(tmp_path):
    run = tmp_path / "runs" / "tiny_std"
    cli.main(["train", "--model", "mnist_cnn", "--epochs", "1", "--limit", "2000", "--eval-n", "200",
              "--out", str(run), "--device", "cpu"])
    assert (run / "checkpoint.pt").is_file() and json.loads((run / "config.json").read_text())["method"] == "standard"
    res = tmp_path / "results"
    cli.main(["eval", "--run", str(run), "--attacks", "fgsm", "pgd5", "--eps", "0.1", "0.3", "--n-eval", "200",
              "--results-dir", str(res), "--device", "cpu"])
    recs = {p.name: json.loads(p.read_text()) for p in res.glob("*.json")}
    expected = {f"tiny_std_{a}_linf_eps{e}_n200.json" for a in ("fgsm", "pgd5") for e in ("0.1", "0.3")}
    assert set(recs) == expected | {"tiny_std_pgd5_linf_eps1_n200.json"}     # the checklist's "reaches ~0" point
    r = recs["tiny_std_pgd5_linf_eps0.3_n200.json"]
    assert r["sanity"]["passed"], r["sanity"]
    assert {c["check"] for c in r["sanity"]["checks"]} >= {"monotone in eps (pgd5)", "input gradients exist",
                                                           "iterative attacks at least as strong as FGSM"}
    assert recs["tiny_std_pgd5_linf_eps1_n200.json"]["robust_acc"] <= 5
    assert r["clean_acc"] > 80 and r["robust_acc"] < r["clean_acc"] and r["n_eval"] == 200
    assert r["command"].startswith("featlab eval") and r["train_command"].startswith("featlab train")
    cli.main(["probe", "--run", str(run), "--eps", "0.1", "--steps", "5", "--n-eval", "100",
              "--results-dir", str(res), "--name", "probe_tiny", "--device", "cpu"])
    probe = json.loads((res / "probe_tiny.json").read_text())
    assert probe[0]["amplification_adv_over_sign"]["embedding"] > 1
    cli.main(["results", "--results-dir", str(res)])
    md = (res / "RESULTS.md").read_text()
    assert md.count("| white-box | pgd5 |") >= 3 and "| pass |" in md


def test_unknown_attack_spec():
    with pytest.raises(ValueError, match="unknown attack spec 'cw'"):
        cli.build_attack("cw", None, 0.3)


@needs_mnist
def test_eval_pretrained(tmp_path):
    """`featlab eval --pretrained NAME` evaluates a shipped model and names its weights and training command."""
    res = tmp_path / "results"
    cli.main(["eval", "--pretrained", "mnist_afd", "--attacks", "fgsm", "pgd5", "--eps", "0.1", "0.3",
              "--n-eval", "100", "--large-eps", "0", "--results-dir", str(res), "--device", "cpu"])
    recs = {p.name: json.loads(p.read_text()) for p in res.glob("*.json")}
    assert set(recs) == {f"pretrained_mnist_resnet_afd_{a}_linf_eps{e}_n100.json"
                         for a in ("fgsm", "pgd5") for e in ("0.1", "0.3")}
    r = recs["pretrained_mnist_resnet_afd_pgd5_linf_eps0.3_n100.json"]
    assert r["method"] == "afd" and r["epochs"] == 3 and r["weights"].startswith("featlab.pretrained:mnist_resnet_afd")
    assert r["train_command"].startswith("featlab train --model mnist_resnet --method afd")
    assert r["clean_acc"] >= 95 and 70 <= r["robust_acc"] <= r["clean_acc"]        # a robust model, not a toy
    dres = tmp_path / "den"
    cli.main(["eval", "--pretrained", "mnist_denoiser_feature", "--attacks", "pgd5", "--eps", "0.3",
              "--n-eval", "50", "--results-dir", str(dres), "--device", "cpu"])
    rows = json.loads((dres / "pretrained_mnist_denoiser_feature_threat_models.json").read_text())
    by = {r["threat_model"]: r for r in rows}
    assert set(by) == {"none", "oblivious", "end-to-end", "bpda"}
    assert by["none"]["classifier_run"] == "featlab.pretrained:mnist_cnn_standard"
    assert by["end-to-end"]["robust_acc"] <= by["oblivious"]["robust_acc"]
    with pytest.raises(SystemExit, match="--pretrained: name: no pretrained model 'mnist_nope'"):
        cli.main(["eval", "--pretrained", "mnist_nope"])
    with pytest.raises(SystemExit):
        cli.main(["eval", "--pretrained", "mnist_afd", "--run", "runs/x"])           # one target, not both
