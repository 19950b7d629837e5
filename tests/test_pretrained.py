"""featlab.pretrained: shipped weights, checksums, weights-only loading, export."""
import json
import shutil

import pytest
import torch

import featlab
from featlab import pretrained
from featlab.checkpoint import CheckpointError
from conftest import needs_mnist


def test_manifest_lists_files_with_matching_hashes():
    man = pretrained.manifest()
    assert "mnist_cnn_standard" in man
    total = 0
    for name, e in man.items():
        path = pretrained.HERE / e["file"]
        assert path.is_file(), name
        assert featlab.checkpoint.sha256(path) == e["sha256"], name
        assert e["train_command"].startswith("featlab train"), name
        total += path.stat().st_size
    assert total < 16e6, "the shipped models stay small"
    assert all(target in man for target in pretrained.ALIASES.values()), "every alias names a shipped model"
    for e in man.values():
        if e["kind"] == "denoiser":
            assert man[e["classifier"]]["kind"] == "classifier"


@needs_mnist
def test_shipped_standard_model_is_the_trained_one():
    x, y = featlab.data.load("mnist", "test", limit=1000)
    assert featlab.evaluate.accuracy(pretrained.load("mnist_standard"), x, y) > 98.0


@needs_mnist
def test_shipped_denoisers_sit_in_front_of_their_classifier():
    x, y = featlab.data.load("mnist", "test", limit=300)
    for name, e in pretrained.manifest().items():
        if e["kind"] == "denoiser":
            d = pretrained.defended(name)
            assert featlab.evaluate.accuracy(d, x, y) > 90, name


def test_unknown_name_and_wrong_kind_are_named():
    with pytest.raises(ValueError, match="no pretrained model 'mnist_vit'; allowed: .*mnist_cnn_standard"):
        pretrained.load("mnist_vit")
    with pytest.raises(ValueError, match="is a classifier; defended\\(\\) takes a denoiser"):
        pretrained.defended("mnist_cnn_standard")


def test_tampered_file_is_refused(tmp_path):
    folder = tmp_path / "pre"
    shutil.copytree(pretrained.HERE, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    entry = pretrained.info("mnist_denoiser_feature", folder)
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged or was replaced, refusing it"):
        pretrained.load("mnist_denoiser_feature", folder=folder)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        pretrained.load("mnist_denoiser_feature", folder=folder)


def test_export_refuses_bad_names_and_orphan_denoisers(tmp_path):
    folder = tmp_path / "pre"
    shutil.copytree(pretrained.HERE, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    run = tmp_path / "den"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "unet_denoiser", "dataset": "mnist", "method": "denoiser",
                                                 "width": 8, "depth": 2}))
    featlab.checkpoint.save({"model": featlab.defenses.UNetDenoiser(width=8).state_dict()}, run / "checkpoint.pt")
    before = (folder / "mnist_denoiser_feature.pt").read_bytes()
    with pytest.raises(ValueError, match="a denoiser needs the pretrained name of its classifier"):
        pretrained.export(run, "mnist_denoiser_feature", folder=folder)
    with pytest.raises(ValueError, match="a denoiser needs"):
        pretrained.export(run, "mnist_denoiser_feature", folder=folder, classifier="mnist_vit")
    assert (folder / "mnist_denoiser_feature.pt").read_bytes() == before, "nothing written before validation"
    pretrained.load("mnist_denoiser_feature", folder=folder)
    with pytest.raises(ValueError, match="lowercase letters"):
        pretrained.export(run, "../evil", folder=folder, classifier="mnist_cnn_standard")


def test_export_roundtrip(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "mnist_resnet", "dataset": "mnist", "method": "standard",
                                                 "command": "featlab train --model mnist_resnet"}))
    model = featlab.models.create("mnist_resnet")
    featlab.checkpoint.save({"model": model.state_dict(), "history": [{"epoch": 1, "time_s": 2.0}]}, run / "checkpoint.pt")
    folder = tmp_path / "pre"
    folder.mkdir()
    out = pretrained.export(run, "mine", folder=folder)
    assert out.stat().st_size < 400_000          # float16
    back = pretrained.load("mine", folder=folder)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.allclose(back(x), model(x), atol=5e-2)
    assert pretrained.info("mine", folder)["epochs"] == 1


def test_export_refuses_weights_that_do_not_fit_the_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "mnist_resnet", "dataset": "mnist", "method": "standard"}))
    featlab.checkpoint.save({"model": featlab.models.create("mnist_cnn").state_dict()}, run / "checkpoint.pt")
    folder = tmp_path / "pre"
    folder.mkdir()
    with pytest.raises(ValueError, match="run_dir: the weights .* do not fit the model its config.json names"):
        pretrained.export(run, "mine", folder=folder)
    assert not list(folder.iterdir()), "nothing written"


@needs_mnist
def test_shipped_feature_denoiser_removes_oblivious_perturbations_and_an_end_to_end_attack_wins():
    """The shipped feature-loss denoiser in its own threat model (PGD-20 on the bare classifier at eps 0.3,
    then denoised) keeps most of 300 test images; the same attack through the denoiser takes most of
    them: the gap notebook 02 teaches."""
    from featlab.evaluate import preprocessing_defense
    x, y = featlab.data.load("mnist", "test", limit=300)
    d = pretrained.defended("mnist_denoiser_feature")
    rows = preprocessing_defense(d.denoiser, d.classifier, x, y, [0.3], steps=20, progress=False)
    by = {r["threat_model"]: r["robust_acc"] for r in rows}
    assert by["none"] < 5 and by["oblivious"] > 90 and by["end-to-end"] < 30, by
