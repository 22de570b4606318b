"""Presets: how big everything is. ``demo`` for CI, ``workshop`` for a laptop or Binder, ``full`` for a GPU.

A notebook's parameters cell sets ``PRESET``; the environment variable ``CXRLAB_PRESET``
overrides it, so CI and ``make course`` run ``demo`` whatever the notebook says.

Measured on 2 CPU cores (torch 2.14.1, channels-last models): the small CNN trains at about
1,300 img/s at 64 px and 290 at 128 px (about 1,000 and 210 with the course's augmentation);
ResNet-18 at 180 and 53; see bench/README.md.

``full`` follows Gichoya et al. 2022's recipe as their code has it: ImageNet ResNet-34 at
320 px, Adam 1e-3, batch 256 (split over GPUs by :mod:`cxrlab.core.replicate`). By the
model's arithmetic (bench/bench_replicate.py) a batch of 256 at 320 px needs about 11 GB of
GPU memory with mixed precision (about 22 GB in float32), so one 16 GB GPU or larger holds
it; the old 224 px / 64 was sized for a small GPU. Not run on a GPU here. The chapters cap a
real source at ``max_images``; the replication command uses every image unless told otherwise.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

ENV_VAR = "CXRLAB_PRESET"


@dataclass(frozen=True)
class Preset:
    """Sizes for one preset. ``n_patients`` applies to the synthetic cohort and caps real subsets."""

    name: str
    image_size: int          # pixels, square
    n_patients: int          # synthetic cohort size (about 2.5 studies per patient)
    max_images: int          # cap on images used from a real source
    model: str               # architecture name for cxrlab.core.models.build_model
    pretrained: bool         # ImageNet weights when they can be downloaded
    epochs: int
    batch_size: int
    patience: int            # early-stopping patience in epochs
    lr: float
    bootstrap: int           # bootstrap resamples for confidence intervals

    def as_dict(self) -> dict:
        """The preset as a plain dict (for results.json and model-store keys)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "demo": Preset(name="demo", image_size=64, n_patients=800, max_images=2000,
                   model="smallcnn", pretrained=False, epochs=6, batch_size=32, patience=2,
                   lr=2e-3, bootstrap=200),
    "workshop": Preset(name="workshop", image_size=128, n_patients=2400, max_images=6000,
                       model="smallcnn", pretrained=False, epochs=10, batch_size=32, patience=3,
                       lr=1e-3, bootstrap=500),
    # The paper's recipe (Gichoya et al. 2022, code): ResNet-34 at 320 px, batch 256, Adam 1e-3.
    "full": Preset(name="full", image_size=320, n_patients=12000, max_images=100_000,
                   model="resnet34", pretrained=True, epochs=30, batch_size=256, patience=5,
                   lr=1e-3, bootstrap=1000),
}


def get_preset(name: str | None = None) -> Preset:
    """Return the preset named by ``$CXRLAB_PRESET`` if set, else ``name`` (default ``demo``).

    >>> get_preset("workshop").image_size
    128
    """
    chosen = os.environ.get(ENV_VAR) or name or "demo"
    try:
        return PRESETS[chosen]
    except KeyError:
        raise ValueError(f"unknown preset {chosen!r}; choose one of {', '.join(PRESETS)}") from None
