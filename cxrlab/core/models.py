"""One-channel models: a small CNN for CPUs, and torchvision's ResNet-18/34 and DenseNet-121.

Every model is a :class:`OneChannelNet`: ``normalize -> backbone -> head``. The backbone
returns the penultimate features (what :func:`embed` gives the frozen-feature probes of
chapters 3 and 5), the head is one linear layer. Grey radiographs have one channel, so the
first convolution of the torchvision models takes one channel; with ImageNet weights its filters
are the sum of the RGB filters (the response to a grey image is unchanged).

>>> model = build_model("smallcnn", n_outputs=3)
>>> model(torch.zeros(2, 1, 64, 64)).shape
torch.Size([2, 3])
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

ARCHITECTURES = ("smallcnn", "resnet18", "resnet34", "densenet121")
# ImageNet statistics of a grey image (mean and std of the RGB means).
IMAGENET_GREY_MEAN = 0.449
IMAGENET_GREY_STD = 0.226


class SmallCNN(nn.Module):
    """Four conv blocks (conv 3x3, batch norm, ReLU, max-pool; 16-32-64-128 channels), then a
    global average pool. Fast enough to train on two CPU cores at 64-128 px."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.n_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class OneChannelNet(nn.Module):
    """``head(backbone(normalize(x)))`` for a ``(B, 1, H, W)`` input in [0, 1].

    Attributes: ``arch`` (name), ``n_features`` (width of the penultimate layer), ``task``
    (set by :func:`cxrlab.core.train.fit`), and two buffers ``target_shift`` / ``target_scale`` that
    map a regression output back to its units (years for age).
    """

    def __init__(self, arch: str, backbone: nn.Module, n_features: int, n_outputs: int,
                 mean: float = 0.5, std: float = 0.25, dropout: float = 0.2) -> None:
        super().__init__()
        self.arch = arch
        self.n_features = n_features
        self.task = "multiclass"
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_features, n_outputs)
        self.register_buffer("input_mean", torch.tensor(float(mean)))
        self.register_buffer("input_std", torch.tensor(float(std)))
        self.register_buffer("target_shift", torch.tensor(0.0))
        self.register_buffer("target_scale", torch.tensor(1.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, n_features)``."""
        return self.backbone((x - self.input_mean) / self.input_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _weights_enum(name: str):
    import torchvision   # loaded on first use: it costs about 1 s at import

    return {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
            "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
            "densenet121": torchvision.models.DenseNet121_Weights.IMAGENET1K_V1}[name]


def download_imagenet_weights(name: str) -> dict[str, torch.Tensor] | None:
    """ImageNet weights of a torchvision model, or ``None`` (with a clear message) when they
    cannot be downloaded (offline, firewall, Binder without network)."""
    weights = _weights_enum(name)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # noqa: BLE001 - any network/IO failure means "train from scratch"
        print(f"Could not download ImageNet weights for {name} ({type(error).__name__}: "
              f"{error}).\nTraining from scratch instead: expect lower AUCs and slower "
              f"convergence. With internet access, the weights are fetched once from "
              f"{weights.url} into {torch.hub.get_dir()}.")
        return None


def _one_channel_conv(conv: nn.Conv2d, pretrained: bool) -> nn.Conv2d:
    """A copy of ``conv`` that takes one input channel (RGB filters summed when pretrained)."""
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    return new


def _torchvision_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int, bool]:
    import torchvision   # loaded on first use: it costs about 1 s at import

    net = getattr(torchvision.models, name)(weights=None)
    state = download_imagenet_weights(name) if pretrained else None
    if state is not None:
        net.load_state_dict(state)
    loaded = state is not None
    if name.startswith("resnet"):
        net.conv1 = _one_channel_conv(net.conv1, loaded)
        n_features = net.fc.in_features
        net.fc = nn.Identity()
    else:
        net.features.conv0 = _one_channel_conv(net.features.conv0, loaded)
        n_features = net.classifier.in_features
        net.classifier = nn.Identity()
    return net, n_features, loaded


def build_model(name: str, n_outputs: int, pretrained: bool = False) -> OneChannelNet:
    """Build a one-channel model with ``n_outputs`` outputs.

    ``name``: ``"smallcnn"``, ``"resnet18"``, ``"resnet34"`` or ``"densenet121"``.
    ``pretrained=True`` loads ImageNet weights for the torchvision models when they can be
    downloaded, and otherwise prints why and falls back to random initialisation (the small CNN
    has no pretrained weights). ``model.pretrained`` says what happened.

    >>> build_model("resnet18", 1).eval()(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 1])
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be at least 1, got {n_outputs}")
    if name == "smallcnn":
        backbone: nn.Module = SmallCNN()
        n_features, loaded = backbone.n_features, False
        mean, std = 0.5, 0.25
    else:
        backbone, n_features, loaded = _torchvision_backbone(name, pretrained)
        mean, std = (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD) if loaded else (0.5, 0.25)
    model = OneChannelNet(name, backbone, n_features, n_outputs, mean, std)
    model.pretrained = loaded
    # Channels-last weights let oneDNN pick its fast convolutions on the CPU: measured on 2
    # cores, the small CNN predicts 2x and trains 1.5x faster (bench/README.md).
    return model.to(memory_format=torch.channels_last)


INFERENCE_PIXELS = 64 * 64 * 64
"""Pixels per inference batch: 64 images at 64 px, 16 at 128 px, 5 at 224 px. Activation
memory grows with pixels, not images, so a fixed image count that is fine at 64 px costs
hundreds of MB at 128 px (the Binder budget is about 2 GB); on a CPU the smaller batches are
also faster (the small CNN: 800 images/s at 128 px in batches of 16, 384 in batches of 64)."""


def inference_batch_size(requested: int, images: np.ndarray) -> int:
    """``requested``, capped so one batch of ``images`` holds at most :data:`INFERENCE_PIXELS`.

    >>> inference_batch_size(256, np.zeros((10, 128, 128), np.uint8))
    16
    """
    pixels = int(np.prod(np.shape(images)[-2:])) if np.ndim(images) >= 2 else 1
    return max(1, min(int(requested), INFERENCE_PIXELS // max(pixels, 1)))


def image_batches(images: np.ndarray, batch_size: int,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Float batches ``(B, 1, H, W)`` of uint8 images ``(N, H, W)``, at most the inference
    pixel budget per batch (:func:`inference_batch_size`); ``transform`` runs once per batch.

    >>> [b.shape[0] for b in image_batches(np.zeros((5, 8, 8), np.uint8), 2)]
    [2, 2, 1]
    """
    from cxrlab.core.datasets import to_float_tensor

    batch_size = inference_batch_size(batch_size, images)
    for start in range(0, len(images), batch_size):
        batch = torch.stack([to_float_tensor(img) for img in images[start:start + batch_size]])
        yield batch if transform is None else transform(batch)   # one call per batch (B, 1, H, W)


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch_size: int = 128,
          device: str | torch.device = "cpu",
          transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Penultimate features ``(N, D)`` of ``images`` (uint8 ``(N, H, W)`` or float in [0, 1]).

    For a :class:`OneChannelNet` these are the backbone's pooled features; for another module
    the output of everything but its last linear layer is not defined, so pass an OneChannelNet.

    >>> embed(build_model("smallcnn", 3), np.zeros((5, 32, 32), np.uint8)).shape
    (5, 128)
    """
    if not hasattr(model, "features") or not callable(model.features):
        raise TypeError("embed needs a model from cxrlab.core.models.build_model")
    was_training = model.training
    model.eval().to(device)
    out = [model.features(batch.to(device)).float().cpu().numpy()
           for batch in image_batches(images, batch_size, transform)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.n_features), np.float32)
