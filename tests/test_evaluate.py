import json
from pathlib import Path

import pytest
import torch

import featlab
from featlab.results import RESULT_KEYS, write_result
from featlab.metrics import accuracy, robust_accuracy
from conftest import needs_mnist, tiny_model


def test_accuracy_counts_exactly():
    m = tiny_model()
    x = torch.rand(20, 1, 8, 8)
    pred = m(x).argmax(1)
    y = pred.clone()
    y[:5] = (y[:5] + 1) % 3
    assert accuracy(m, x, y, batch_size=7) == pytest.approx(75.0)
    ident = lambda xb, yb: xb  # noqa: E731  (the "no attack" attack)
    assert robust_accuracy(m, x, y, ident, batch_size=6, progress=False) == pytest.approx(75.0)


def test_write_result_requires_schema(tmp_path):
    rec = {k: 1 for k in RESULT_KEYS if k not in ("commit", "date", "command")}
    p = write_result("run", rec, tmp_path)
    d = json.loads(p.read_text())
    assert set(RESULT_KEYS) <= set(d) and "torch" in d["versions"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['robust_acc'\]"):
        write_result("bad", {k: v for k, v in rec.items() if k != "robust_acc"}, tmp_path)


def test_git_commit_of_a_repository_without_commits_is_unknown(tmp_path, monkeypatch):
    import shutil
    import subprocess
    from featlab.results import git_commit
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))   # tmp_path may sit inside a checkout
    monkeypatch.delenv("GIT_DIR", raising=False)
    assert git_commit(cwd=tmp_path) == "unknown"                      # not a repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(cwd=tmp_path) == "unknown"                      # a repository, no commit yet (was "HEAD")
    if not (Path(featlab.__file__).resolve().parent.parent / ".git").exists():
        return                                                         # featlab installed without its repository
    full = git_commit()
    assert len(full.split("+")[0]) == 40 and all(c in "0123456789abcdef" for c in full.split("+")[0])


def test_robust_accuracy_refuses_results_outside_the_threat_model():
    from featlab.metrics import check_threat_model
    model = tiny_model()
    x = torch.rand(8, 1, 8, 8) * 0.5 + 0.25
    y = torch.randint(0, 3, (8,))

    class Cheat:                       # claims eps 0.1 but moves 0.2: its "success" must not count
        eps, norm, name = 0.1, "linf", "cheat"

        def __call__(self, xb, yb):
            return (xb + 0.2).clamp(0, 1)

    with pytest.raises(RuntimeError, match="cheat: a perturbation of linf size 0.2.* exceeds eps 0.1"):
        robust_accuracy(model, x, y, Cheat(), progress=False)
    Cheat.eps = 0.2
    with torch.no_grad():          # now within its eps: counted as robust where correct both clean and moved
        expected = 100.0 * ((model(x).argmax(1) == y) & (model((x + 0.2).clamp(0, 1)).argmax(1) == y)).float().mean()
    assert robust_accuracy(model, x, y, Cheat(), progress=False) == pytest.approx(float(expected))
    with pytest.raises(RuntimeError, match="outside \\[0, 1\\]"):
        robust_accuracy(model, x, y, lambda xb, yb: xb + 1.0, progress=False)
    with pytest.raises(RuntimeError, match="l2 size"):
        check_threat_model(x, x + 0.05, eps=0.1, norm="L2")   # L2 size 0.4 (torchattacks spells it "L2")
    check_threat_model(x, x, eps=0.0, norm="Linf")


def test_per_example_worst_case_counts_images_every_attack_left_correct():
    from featlab.evaluate import per_example_worst_case
    a = torch.tensor([True, True, False, True, False, True])
    b = torch.tensor([True, False, True, True, False, True])
    rows = [{"attack": "pgd40", "eps": 0.3, "norm": "linf", "clean_acc": 100.0, "robust_acc": 66.7, "wall_s": 1.0,
             "correct": a},
            {"attack": "square", "eps": 0.3, "norm": "linf", "clean_acc": 100.0, "robust_acc": 66.7, "wall_s": 2.0,
             "correct": b},
            {"attack": "pgd40", "eps": 0.1, "norm": "linf", "clean_acc": 100.0, "robust_acc": 100.0, "wall_s": 1.0,
             "correct": torch.ones(6, dtype=torch.bool)}]
    (w,) = per_example_worst_case(rows)               # eps 0.1 has one attack only: no row
    assert w["attack"] == "worst-case" and w["attacks"] == ["pgd40", "square"] and w["eps"] == 0.3
    assert w["robust_acc"] == pytest.approx(50.0)     # 3 of 6 survive both, below either attack's 66.7
    assert torch.equal(w["correct"], a & b) and w["wall_s"] == 3.0


def test_sweep_rows_carry_per_example_correctness(tiny):
    from featlab.evaluate import sweep
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 3, (12,))
    rows = sweep(tiny, x, y, ["fgsm", "pgd5"], [0.0, 0.2], progress=False)
    for r in rows:
        assert r["correct"].dtype == torch.bool and len(r["correct"]) == 12
        assert r["robust_acc"] == pytest.approx(100.0 * r["correct"].float().mean().item())


class _Interrupt(Exception):
    pass


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    """A killed long evaluation (AutoAttack on 1,000 images) keeps its finished batches: the rerun
    attacks only the rest and returns exactly the uninterrupted result; other weights are refused."""
    from featlab.attacks import PGD
    from featlab.evaluate import sweep
    torch.manual_seed(0)
    m = tiny_model()
    x = torch.rand(50, 1, 8, 8)
    y = m(x).argmax(1)
    calls = []

    def factory(stop_after=None):
        def make(model, eps):
            pgd = PGD(model, eps=eps, steps=5, step_size=eps / 2)

            def attack(xb, yb):            # a plain callable: attacked batch by batch, each seeded by its index
                if stop_after is not None and len(calls) == stop_after:
                    raise _Interrupt
                calls.append(len(xb))
                return pgd(xb, yb)
            return attack
        return make

    full = sweep(m, x, y, {"pgd": factory()}, [0.02], batch_size=10, progress=False)[0]
    assert 0 < full["robust_acc"] < 100             # some fooled, some not: the comparison has content
    calls.clear()
    resume = tmp_path / "partial"
    with pytest.raises(_Interrupt):
        sweep(m, x, y, {"pgd": factory(stop_after=3)}, [0.02], batch_size=10, progress=False, resume_dir=resume)
    assert len(list(resume.rglob("batch*.pt"))) == 3
    calls.clear()
    again = sweep(m, x, y, {"pgd": factory()}, [0.02], batch_size=10, progress=False, resume_dir=resume)[0]
    assert len(calls) == 2 and again["resumed_batches"] == 3      # only the two unfinished batches ran
    assert torch.equal(again["correct"], full["correct"]) and again["robust_acc"] == full["robust_acc"]
    # the same folder, other weights: refused, naming the argument
    with torch.no_grad():
        m.head.weight.add_(0.01)
    with pytest.raises(ValueError, match="resume_dir: .* holds another evaluation"):
        sweep(m, x, y, {"pgd": factory()}, [0.02], batch_size=10, progress=False, resume_dir=resume)
    assert calls == [10, 10], "refused before any attack ran"
    with pytest.raises(TypeError, match="resume: a featlab.metrics.BatchStore"):
        featlab.metrics.robust_correct(m, x, y, lambda a, b: a, resume=str(resume))


def test_a_resume_key_tells_settings_kept_outside_the_weights_apart(tmp_path):
    """bits2 and bits4 have no weights: the key still tells them apart (their repr), and so do two PGD
    attacks that differ in steps only."""
    from featlab.defenses import create_control
    from featlab.evaluate import preprocessing_defense, sweep
    from featlab.metrics import state_fingerprint
    torch.manual_seed(0)
    m = tiny_model()
    x = torch.rand(20, 1, 8, 8)
    y = m(x).argmax(1)
    two, four = (featlab.models.Defended(create_control(c), m) for c in ("bits2", "bits4"))
    assert state_fingerprint(two) != state_fingerprint(four)
    preprocessing_defense(create_control("bits2"), m, x, y, [0.02], steps=2, batch_size=10, progress=False,
                          resume_dir=tmp_path / "p")
    with pytest.raises(ValueError, match="holds another evaluation"):
        preprocessing_defense(create_control("bits4"), m, x, y, [0.02], steps=2, batch_size=10, progress=False,
                              resume_dir=tmp_path / "p")
    pgd = lambda steps: {"pgd": lambda model, eps: featlab.attacks.PGD(model, eps=eps, steps=steps)}  # noqa: E731
    sweep(m, x, y, pgd(2), [0.02], batch_size=10, progress=False, resume_dir=tmp_path / "s")
    with pytest.raises(ValueError, match="holds another evaluation"):
        sweep(m, x, y, pgd(3), [0.02], batch_size=10, progress=False, resume_dir=tmp_path / "s")


@needs_mnist
def test_featlab_eval_reads_back_finished_batches_and_then_drops_them(tmp_path, capsys, monkeypatch):
    """featlab eval keeps each attack's finished batches under results/.partial until its records are
    written, so the same command after a kill resumes; the record says how many batches it read back.
    Another command on the same model uses its own folder, and leaves this one alone."""
    from featlab import cli, experiments
    args = ["eval", "--pretrained", "mnist_cnn_standard", "--attacks", "pgd5", "--eps", "0.1", "--n-eval", "60",
            "--batch-size", "20", "--large-eps", "0"]
    cli.main(args + ["--results-dir", str(tmp_path / "fresh")])
    name = "pretrained_mnist_cnn_standard_pgd5_linf_eps0.1_n60.json"
    fresh = json.loads((tmp_path / "fresh" / name).read_text())
    assert not (tmp_path / "fresh" / ".partial").exists()
    # killed after the attacks, before the records
    with monkeypatch.context() as mp:
        mp.setattr(experiments, "write_result", lambda *a, **k: (_ for _ in ()).throw(_Interrupt()))
        with pytest.raises(_Interrupt):
            cli.main(args + ["--results-dir", str(tmp_path / "resumed")])
    [partial] = (tmp_path / "resumed" / ".partial").iterdir()
    assert len(list(partial.rglob("batch*.pt"))) == 3
    cli.main(args[:4] + ["pgd3"] + args[5:] + ["--results-dir", str(tmp_path / "resumed")])     # another command
    assert partial.is_dir(), "another command on the same model leaves this folder alone"
    assert not (tmp_path / "resumed" / name).exists()
    cli.main(args + ["--results-dir", str(tmp_path / "resumed")])
    rec = json.loads((tmp_path / "resumed" / name).read_text())
    assert rec["resumed_batches"] == 3 and "batch(es) read back" in capsys.readouterr().out
    assert (rec["clean_acc"], rec["robust_acc"]) == (fresh["clean_acc"], fresh["robust_acc"])
    assert not (tmp_path / "resumed" / ".partial").exists()


def test_preprocessing_defense_resumes_every_threat_model(tmp_path, monkeypatch):
    from featlab import metrics
    from featlab.defenses import create_control
    from featlab.evaluate import preprocessing_defense
    torch.manual_seed(0)
    m = tiny_model()
    x = torch.rand(30, 1, 8, 8)
    y = m(x).argmax(1)
    pre = create_control("median3")
    first = preprocessing_defense(pre, m, x, y, [0.02], steps=3, batch_size=10, progress=False,
                                  pipeline_attacks=["square20"], resume_dir=tmp_path)
    # 4 threat models + Square on the pipeline, 3 batches each
    assert len(list(tmp_path.rglob("batch*.pt"))) == 15
    monkeypatch.setattr(metrics, "check_threat_model", lambda *a, **k: pytest.fail("an attack ran again"))
    again = preprocessing_defense(pre, m, x, y, [0.02], steps=3, batch_size=10, progress=False,
                                  pipeline_attacks=["square20"], resume_dir=tmp_path)
    assert again == first


def test_preprocessing_defense_runs_the_threat_models_asked_for():
    """A subset of the threat models gives the same rows as the full call, for those threat models only, and the
    pipeline attacks still run; a wrong name or a bare string is refused with the allowed values."""
    from featlab.defenses import create_control
    from featlab.evaluate import THREAT_MODELS, preprocessing_defense
    torch.manual_seed(0)
    m = tiny_model()
    x = torch.rand(20, 1, 8, 8)
    y = m(x).argmax(1)
    pre = create_control("median3")
    full = preprocessing_defense(pre, m, x, y, [0.02, 0.1], steps=3, progress=False, pipeline_attacks=["apgd-ce5"])
    part = preprocessing_defense(pre, m, x, y, [0.02, 0.1], steps=3, progress=False, pipeline_attacks=["apgd-ce5"],
                                 threat_models=["end-to-end"])
    assert part == [r for r in full if r["threat_model"] == "end-to-end"]
    assert {r["attack"] for r in part} == {"pgd3", "apgd-ce5"}
    assert [r["threat_model"] for r in full[:4]] == list(THREAT_MODELS)
    with pytest.raises(ValueError, match="threat_models.*oblivious"):
        preprocessing_defense(pre, m, x, y, [0.02], threat_models=["eot"])
    with pytest.raises(TypeError, match="threat_models.*string"):
        preprocessing_defense(pre, m, x, y, [0.02], threat_models="bpda")
