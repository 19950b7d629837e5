import pytest
import torch

from featlab import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_has_taps_encoder_head(name):
    m = models.create(name).eval()
    c, h, w = m.input_shape
    x = torch.rand(2, c, h, w)
    feats = m.features(x)
    assert list(feats) == list(m.tap_names)
    out = m(x)
    assert out.shape == (2, m.num_classes)
    assert torch.allclose(feats["logits"], out, atol=1e-5)
    assert torch.allclose(m.head(m.embed(x)), out, atol=1e-5)
    assert torch.allclose(feats["embedding"], m.embed(x), atol=1e-5)
    first = m.tap_names[0]
    part = m.features(x, layers=[first])
    assert list(part) == [first] and torch.allclose(part[first], feats[first], atol=1e-6)


def test_normalisation_lives_inside_the_model():
    m = models.create("mnist_cnn")
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor([0.1307]))
    x = torch.full((1, 1, 28, 28), 0.1307)
    assert torch.allclose(m.normalize(x), torch.zeros_like(x), atol=1e-6)


def test_afd_small_resnet_embedding_is_64d_and_unit_norm():
    m = models.create("mnist_resnet").eval()
    e = m.embed(torch.rand(4, 1, 28, 28))
    assert e.shape == (4, 64) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*allowed"):
        models.create("vgg")
    m = models.create("mnist_cnn")
    with pytest.raises(ValueError, match=r"layers: unknown tap name\(s\) \['conv9'\].*allowed.*conv1"):
        m.features(torch.rand(1, 1, 28, 28), layers=["conv1", "conv9"])


def test_features_in_order_and_deep_first_request():
    m = models.create("mnist_cnn").eval()
    f = m.features(torch.rand(1, 1, 28, 28), layers=["logits", "conv1"])
    assert list(f) == ["conv1", "logits"]


def test_cifar100_head():
    assert models.create("preact_resnet18", num_classes=100)(torch.rand(1, 3, 32, 32)).shape == (1, 100)


def test_cifar_cpu_models_size_and_shapes():
    air = models.create("cifar_airnet").eval()
    n_air = sum(p.numel() for p in air.parameters())
    assert n_air * 4 < 5e6, "cifar_airnet's fp32 weights fit the 5 MB shipping limit"
    assert air.embed(torch.rand(2, 3, 32, 32)).shape == (2, 192) and air.embedding_dim == 192
    assert [n for n in air.tap_names] == ["stem", "block1", "block2", "block3", "pool", "embedding", "logits"]
    f = air.features(torch.rand(1, 3, 32, 32), layers=["block1", "block3"])
    assert f["block1"].shape[-1] == 16 and f["block3"].shape[-1] == 4
    r20 = models.create("resnet20")
    assert 0.26e6 < sum(p.numel() for p in r20.parameters()) < 0.28e6, "ResNet-20 has He et al.'s 0.27 M parameters"
    with pytest.raises(ValueError, match="widths: four positive"):
        models.create("cifar_airnet", widths=(32, 64, 0, 192))
