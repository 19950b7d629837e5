import json
from pathlib import Path

import pytest
import torch

import featlab
from featlab.results import RESULT_KEYS, write_result
from featlab.metrics import accuracy, robust_accuracy
from conftest import tiny_model


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
