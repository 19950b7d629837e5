import json

import pytest

from featlab import cli, experiments
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
    worst = {f"tiny_std_worst-case_linf_eps{e}_n200.json" for e in ("0.1", "0.3")}  # per image, across attacks
    assert set(recs) == expected | worst | {"tiny_std_pgd5_linf_eps1_n200.json"}   # + the checklist's ~0 point
    for e in ("0.1", "0.3"):
        w = recs[f"tiny_std_worst-case_linf_eps{e}_n200.json"]
        assert w["attacks"] == ["fgsm", "pgd5"]
        assert w["robust_acc"] <= min(recs[f"tiny_std_{a}_linf_eps{e}_n200.json"]["robust_acc"] for a in ("fgsm", "pgd5"))
    r = recs["tiny_std_pgd5_linf_eps0.3_n200.json"]
    assert r["sanity"]["passed"], r["sanity"]
    assert {c["check"] for c in r["sanity"]["checks"]} >= {"monotone in eps (pgd5)", "input gradients exist",
                                                           "iterative attacks at least as strong as FGSM"}
    assert recs["tiny_std_pgd5_linf_eps1_n200.json"]["robust_acc"] <= 5
    assert r["clean_acc"] > 80 and r["robust_acc"] < r["clean_acc"] and r["n_eval"] == 200
    assert r["command"].startswith("featlab eval") and r["train_command"].startswith("featlab train")
    from featlab._utils import git_commit
    assert r["train_commit"] == json.loads((run / "config.json").read_text())["commit"] == git_commit()
    cli.main(["probe", "--run", str(run), "--eps", "0.1", "--steps", "5", "--n-eval", "100",
              "--results-dir", str(res), "--name", "probe_tiny", "--device", "cpu"])
    probe = json.loads((res / "probe_tiny.json").read_text())
    assert probe[0]["amplification_adv_over_sign"]["embedding"] > 1
    cli.main(["results", "--results-dir", str(res)])
    md = (res / "RESULTS.md").read_text()
    assert md.count("| white-box | pgd5 |") >= 3 and "| pass |" in md


def test_unknown_attack_spec(capsys):
    with pytest.raises(SystemExit) as err:          # a usage error, before anything loads
        cli.main(["eval", "--pretrained", "mnist_cnn_standard", "--attacks", "cw"])
    assert err.value.code == 2 and "unknown attack spec 'cw'" in capsys.readouterr().err


@needs_mnist
def test_eval_pretrained(tmp_path, capsys):
    """`featlab eval --pretrained NAME` evaluates a shipped model and names its weights and training command."""
    res = tmp_path / "results"
    cli.main(["eval", "--pretrained", "mnist_afd", "--attacks", "fgsm", "pgd5", "--eps", "0.1", "0.3",
              "--n-eval", "100", "--large-eps", "0", "--results-dir", str(res), "--device", "cpu"])
    recs = {p.name: json.loads(p.read_text()) for p in res.glob("*.json")}
    assert set(recs) == {f"pretrained_mnist_resnet_afd_{a}_linf_eps{e}_n100.json"
                         for a in ("fgsm", "pgd5", "worst-case") for e in ("0.1", "0.3")}
    r = recs["pretrained_mnist_resnet_afd_pgd5_linf_eps0.3_n100.json"]
    assert r["method"] == "afd" and r["epochs"] == 8 and r["weights"].startswith("featlab.pretrained:mnist_resnet_afd")
    assert r["train_command"].startswith("featlab train --model mnist_resnet --method afd")
    assert r["clean_acc"] >= 95 and 70 <= r["robust_acc"] <= r["clean_acc"]        # a robust model, not a toy
    dres = tmp_path / "den"
    cli.main(["eval", "--pretrained", "mnist_denoiser_feature", "--attacks", "pgd5", "--eps", "0.3",
              "--n-eval", "50", "--results-dir", str(dres), "--device", "cpu"])
    rows = json.loads((dres / "pretrained_mnist_denoiser_feature_threat_models.json").read_text())
    by = {r["threat_model"]: r for r in rows}
    assert set(by) == {"none", "oblivious", "end-to-end", "bpda"}
    assert by["none"]["classifier_run"] == "pretrained:mnist_cnn_standard"
    assert by["end-to-end"]["robust_acc"] <= by["oblivious"]["robust_acc"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--pretrained", "mnist_nope"])
    assert exit_.value.code == 2 and "--pretrained: no pretrained model 'mnist_nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--pretrained", "mnist_afd", "--run", "runs/x"])           # one target, not both


def _featlab(*args: str, timeout: float = 120):
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "featlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args, flag", [
    (["eval", "--run", "missing/"], "--run"),
    (["eval", "--pretrained", "mnist_cnn_standard", "--eps", "-1"], "--eps"),
    (["eval", "--pretrained", "mnist_cnn_standard", "--eps", "2"], "--eps"),
    (["eval", "--pretrained", "mnist_cnn_standard", "--attacks", "bogus"], "--attacks"),
    (["eval", "--pretrained", "mnist_cnn_standard", "--n-eval", "0"], "--n-eval"),
    (["eval", "--pretrained", "no_such_model"], "--pretrained"),
    (["train", "--epochs", "0", "--out", "x"], "--epochs"),
    (["train", "--eps", "nan", "--out", "x"], "--eps"),
    (["train", "--method", "trades", "--train-attack", "apgd-ce", "--out", "x"], "--train-attack"),
    (["train", "--method", "denoiser", "--out", "x"], "--classifier-run"),
    (["train", "--milestones", "3", "--epochs", "2", "--out", "x"], "--milestones"),
    (["train", "--lr-schedule", "triangle", "--milestones", "1", "--epochs", "2", "--out", "x"], "--milestones"),
    (["train", "--warmup-epochs", "1", "--epochs", "2", "--out", "x"], "--warmup-epochs"),
    (["train", "--lr-schedule", "triangle", "--warmup-epochs", "3", "--epochs", "2", "--out", "x"], "--warmup-epochs"),
    (["train", "--method", "pgd_at", "--label-smoothing", "0.1", "--out", "x"], "--label-smoothing"),
    (["train", "--label-smoothing", "1.5", "--out", "x"], "--label-smoothing"),
    (["results", "--results-dir", "x"], "--results-dir"),
])
def test_bad_flags_are_usage_errors_that_name_the_flag(args, flag, tmp_path):
    """Checked before any data or model is loaded: exit 2, the flag named, no traceback, nothing written."""
    p = _featlab(*[a if a != "x" else str(tmp_path / "run") for a in args])
    assert p.returncode == 2, p.stderr
    assert flag in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


@needs_mnist
def test_runtime_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "model": "mnist_cnn", "method": "standard"}))
    (run / "checkpoint.pt").write_text("<html>not a checkpoint</html>")
    p = _featlab("eval", "--run", str(run), "--n-eval", "10")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "checkpoint.pt" in p.stderr and "corrupted" in p.stderr
    p = _featlab("--debug", "eval", "--run", str(run), "--n-eval", "10")
    assert p.returncode == 1 and "Traceback" in p.stderr


@needs_mnist
def test_train_refuses_an_out_folder_of_another_run_before_writing(tmp_path):
    run = tmp_path / "run"
    cli.main(["train", "--model", "mnist_cnn", "--epochs", "1", "--limit", "256", "--eval-n", "50",
              "--out", str(run), "--device", "cpu"])
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    p = _featlab("train", "--model", "mnist_resnet", "--epochs", "1", "--limit", "256", "--out", str(run))
    assert p.returncode == 2 and "--out" in p.stderr and "another run" in p.stderr
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


@needs_mnist
def test_eval_controls_and_denoiser_transfer(tmp_path, capsys):
    """A control is evaluated in every threat model, Square included, and the checklist flags
    binarisation (its gradient is zero); a shipped denoiser evaluated in front of another classifier
    is labelled as transfer and names the classifier it was trained for."""
    res = tmp_path / "res"
    cli.main(["eval", "--control", "binarize", "--classifier-run", "pretrained:mnist_cnn_standard",
              "--attacks", "pgd10", "square300", "--n-eval", "100", "--results-dir", str(res), "--device", "cpu"])
    rows = json.loads((res / "control_binarize_mnist_cnn_standard_threat_models.json").read_text())
    by = {(r["threat_model"], r["attack"].split()[0]): r for r in rows}
    assert set(by) == {("none", "pgd10"), ("oblivious", "pgd10"), ("end-to-end", "pgd10"), ("bpda", "bpda-pgd10"),
                       ("end-to-end", "square300")}
    assert all(r["method"] == "control" and r["model"] == "binarize" for r in rows)
    checks = {c["check"]: c["passed"] for c in rows[0]["sanity"]["checks"]}
    assert checks["end-to-end at least as strong as BPDA"] is False and rows[0]["sanity"]["passed"] is False
    assert by[("end-to-end", "square300")]["robust_acc"] <= by[("end-to-end", "pgd10")]["robust_acc"]
    cli.main(["eval", "--pretrained", "mnist_denoiser_feature", "--classifier-run", "pretrained:mnist_resnet_standard",
              "--attacks", "pgd5", "--n-eval", "50", "--results-dir", str(res), "--device", "cpu"])
    rows = json.loads((res / "pretrained_mnist_denoiser_feature_on_mnist_resnet_standard_threat_models.json").read_text())
    assert {r["classifier_run"] for r in rows} == {"pretrained:mnist_resnet_standard"}
    assert {r["trained_for"] for r in rows} == {"pretrained:mnist_cnn_standard"}
    for argv, msg in ((["--control", "binarize"], "--classifier-run: required with --control"),
                      (["--pretrained", "mnist_afd", "--classifier-run", "pretrained:mnist_cnn_standard"],
                       "--classifier-run: only for a denoiser"),
                      (["--control", "binarize", "--classifier-run", "pretrained:mnist_denoiser_feature"],
                       "is a denoiser; a shipped classifier is needed")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["eval", *argv, "--n-eval", "10", "--results-dir", str(res), "--device", "cpu"])
        assert exit_.value.code == 2 and msg in capsys.readouterr().err


def test_a_run_keeps_the_commit_it_started_at_and_lists_those_it_resumed_at(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "git_commit", lambda: "bbb")
    path = tmp_path / "config.json"
    assert experiments._commits(path) == {"commit": "bbb"}, "a new run"
    for old, expected in (({"commit": "bbb"}, {"commit": "bbb"}),
                          ({"commit": "aaa"}, {"commit": "aaa", "resumed_at_commits": ["bbb"]}),
                          ({"commit": "aaa", "resumed_at_commits": ["bbb"]}, {"commit": "aaa", "resumed_at_commits": ["bbb"]}),
                          ({"method": "afd"}, {"commit": "unknown", "resumed_at_commits": ["bbb"]})):  # from before
        path.write_text(json.dumps(old))
        assert experiments._commits(path) == expected, old


@needs_mnist
def test_an_evaluation_records_the_commit_it_started_at_not_the_one_it_ended_at(tmp_path, monkeypatch):
    # the code changes (a commit lands) while a long evaluation runs: its records name the code that computed them
    from featlab import results
    monkeypatch.setattr(experiments, "git_commit", lambda: "start")
    monkeypatch.setattr(results, "git_commit", lambda: "end")
    res = tmp_path / "results"
    cli.main(["eval", "--pretrained", "mnist_cnn_standard", "--attacks", "fgsm", "--eps", "0.3", "--n-eval", "20",
              "--large-eps", "0", "--results-dir", str(res), "--device", "cpu"])
    recs = [json.loads(p.read_text()) for p in res.glob("*.json")]
    assert recs and {r["commit"] for r in recs} == {"start"}
