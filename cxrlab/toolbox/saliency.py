"""Saliency maps (captum) and the randomisation sanity check, for chapter 4.

Gichoya et al. 2022 looked at saliency maps of their race models and found nothing a person
could name: the maps did not explain the finding. Adebayo et al. 2018 ("Sanity checks for
saliency maps", NeurIPS) showed why one should be careful anyway: some maps barely change when
the model's weights are replaced by random ones, so they describe the image, not the model.
This module computes maps with three captum methods and runs that check.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
>>> attribute(model, torch.rand(3, 1, 4, 4), target=1).shape
(3, 4, 4)
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.toolbox.checks import passed, require
from cxrlab.core.models import inference_batch_size

METHODS = ("gradient", "integrated_gradients", "occlusion")


def _images_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 or float ``(N, H, W)`` / ``(N, 1, H, W)`` as a float tensor ``(N, 1, H, W)`` in [0, 1]."""
    t = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"expected images (N, H, W) or (N, 1, H, W), got shape {tuple(t.shape)}")
    return t


IG_CHUNK = 32
"""Integrated gradients evaluates ``n_steps`` interpolated copies of each image; captum runs
them through the model at most this many at a time (fewer for big images: the pixel budget of
:func:`cxrlab.core.models.inference_batch_size`; at least one batch of images), so memory does not
grow with ``n_steps`` (all 512 copies at once cost 600 MB on the demo model). Occlusion's
patched copies are batched by the same budget."""


def _targets(target: int | Sequence[int] | np.ndarray, n: int) -> torch.Tensor:
    tgt = torch.as_tensor(np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy())
    if (tgt < 0).any():
        raise ValueError("targets must be class indices >= 0 (got a missing label?)")
    return tgt


def _attribute_batch(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
                     n_steps: int, window: int, stride: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients, Occlusion, Saliency

    if method == "gradient":
        return Saliency(model).attribute(x, target=target, abs=True)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                    n_steps=n_steps,
                                                    internal_batch_size=max(len(x), inference_batch_size(IG_CHUNK, x)))
    if method == "occlusion":
        return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(1, window, window),
                                          strides=(1, stride, stride), baselines=0.0,
                                          perturbations_per_eval=max(1, inference_batch_size(256, x) // len(x)))
    raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")


def attribute(model: nn.Module, images: np.ndarray | torch.Tensor, target: int | Sequence[int] | np.ndarray,
              method: str = "gradient", *, device: str | torch.device | None = None, batch_size: int = 32,
              n_steps: int = 32, window: int | None = None, stride: int | None = None,
              absolute: bool = True) -> np.ndarray:
    """Saliency maps ``(N, H, W)`` of ``model`` for class ``target`` (one int, or one per image).

    Methods (captum): ``"gradient"`` (|d score / d pixel|, Simonyan et al. 2014),
    ``"integrated_gradients"`` (Sundararajan et al. 2017, from a black baseline in ``n_steps``),
    ``"occlusion"`` (drop in the class score when a ``window`` x ``window`` black patch covers a
    pixel, Zeiler and Fergus 2014; default window 1/8 of the image, stride one window: 64
    forward passes per image; a smaller ``stride`` gives smoother maps at a higher cost).
    ``absolute`` returns magnitudes (what the maps and the rank correlations use).
    """
    x_all = _images_tensor(images)
    tgt_all = _targets(target, len(x_all))
    batch_size = inference_batch_size(batch_size, x_all)      # the pixel budget caps memory
    h = x_all.shape[-1]
    window = window or max(2, h // 8)
    stride = stride or window
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    maps = []
    try:
        with torch.no_grad():
            n_outputs = model(x_all[:1].to(device)).shape[-1]
        # a binary model with one logit: class 1 is the logit, class 0 its negative
        sign = (2.0 * tgt_all - 1.0).view(-1, 1, 1, 1) if n_outputs == 1 else None
        if sign is not None:
            if (tgt_all > 1).any():
                raise ValueError("a model with one output is binary: targets must be 0 or 1")
            tgt_all = torch.zeros_like(tgt_all)
        for start in range(0, len(x_all), batch_size):
            x = x_all[start:start + batch_size].to(device).requires_grad_(True)
            tgt = tgt_all[start:start + batch_size].to(device)
            att = _attribute_batch(model, x, tgt, method, n_steps, window, stride).detach()
            if sign is not None:
                att = att * sign[start:start + batch_size].to(att.device)
            maps.append((att.abs() if absolute else att)[:, 0].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(maps).astype(np.float32)


# --------------------------------------------------------------------------- randomisation check
def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own weights (conv, linear, norm), input to output order."""
    return [name for name, module in model.named_modules()
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))]


def randomize_weights(model: nn.Module, layers: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose ``layers`` (default: all) are re-initialised at random.

    Normalisation layers are reset too (their running statistics included). The original model
    and the global random state are untouched.
    """
    clone = copy.deepcopy(model)
    names = parameter_layers(clone) if layers is None else list(layers)
    modules = dict(clone.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no layer(s) named {missing} in the model; see parameter_layers(model)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            modules[name].reset_parameters()
            if hasattr(modules[name], "reset_running_stats"):
                modules[name].reset_running_stats()
    return clone


def rank_correlation(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between paired maps, one value per image (``(N,)``)."""
    from scipy.stats import rankdata

    a = np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / denom, 0.0)


def randomization_check(model: nn.Module, images: np.ndarray | torch.Tensor,
                        target: int | Sequence[int] | np.ndarray, method: str = "gradient",
                        seed: int = 0, **kwargs) -> float:
    """Mean Spearman correlation between maps of the trained model and of a fully randomised copy.

    Near 1: the map hardly depends on what the model learned (it fails the sanity check of
    Adebayo et al. 2018). Near 0: the map reflects the trained weights.
    """
    trained = attribute(model, images, target, method, **kwargs)
    random = attribute(randomize_weights(model, seed=seed), images, target, method, **kwargs)
    return float(np.mean(rank_correlation(trained, random)))


def cascading_randomization(model: nn.Module, images: np.ndarray | torch.Tensor,
                            target: int | Sequence[int] | np.ndarray, method: str = "gradient",
                            seed: int = 0, **kwargs) -> pd.DataFrame:
    """Adebayo et al.'s cascade: randomise layers from the output down, one more at each step.

    Returns one row per step: ``layer`` (the last layer randomised), ``n_randomized`` and the
    mean and standard deviation over images of the rank correlation with the trained model's maps.
    """
    trained = attribute(model, images, target, method, **kwargs)
    layers = parameter_layers(model)[::-1]
    rows = [{"layer": "(none: trained)", "n_randomized": 0, "spearman": 1.0, "spearman_sd": 0.0}]
    for k in range(1, len(layers) + 1):
        maps = attribute(randomize_weights(model, layers[:k], seed=seed), images, target, method, **kwargs)
        rho = rank_correlation(trained, maps)
        rows.append({"layer": layers[k - 1], "n_randomized": k, "spearman": float(rho.mean()),
                     "spearman_sd": float(rho.std())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries and figures
def region_fraction(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each map's total (absolute) attribution that falls inside ``mask`` (``(N,)``)."""
    maps = np.abs(np.asarray(maps, dtype=np.float64))
    mask = np.asarray(mask, dtype=bool)
    inside = (maps * mask).reshape(len(maps), -1).sum(axis=1)
    total = maps.reshape(len(maps), -1).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def tile_shares(maps: np.ndarray, grid: int = 3) -> np.ndarray:
    """Mean share of attribution in each tile of a ``grid`` x ``grid`` partition (``(grid, grid)``),
    comparable with chapter 4's tile heat map of AUC."""
    from cxrlab.toolbox.degrade import tile_mask

    h, w = np.asarray(maps).shape[-2:]
    shares = np.zeros((grid, grid))
    for tile in range(grid * grid):
        shares[divmod(tile, grid)] = region_fraction(maps, tile_mask(h, w, tile, grid)).mean()
    return shares


def show_maps(images: np.ndarray | torch.Tensor, maps: dict[str, np.ndarray], n: int = 4,
              row_labels: Sequence[str] | None = None):
    """Figure: each image (rows) next to its maps (columns, one per entry of ``maps``)."""
    import matplotlib.pyplot as plt

    x = _images_tensor(images)[:n, 0].numpy()
    cols = 1 + len(maps)
    fig, axes = plt.subplots(len(x), cols, figsize=(2.2 * cols, 2.2 * len(x)), squeeze=False)
    for i, img in enumerate(x):
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(row_labels[i] if row_labels else f"image {i}")
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(m[i], cmap="magma")
            if i == 0:
                axes[i, j].set_title(name)
        if i == 0:
            axes[i, 0].set_title("image")
        for ax in axes[i]:
            ax.set_xticks([]); ax.set_yticks([])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- learner self-check
VERDICTS = {
    "located": "The group signal sits in the lungs: that is where the map is bright.",
    "anatomy": "The model reads the group from anatomy, so the finding has a biological cause.",
    "sensitivity": ("The map shows where small pixel changes move the score most. It does not say "
                    "which property of the image (texture, frequency band, intensity) carries the "
                    "group signal, and it is evidence only as far as it differs from the map of a "
                    "model with random weights."),
    "useless": "Saliency maps are always meaningless and should never be computed.",
}
"""Readings of a saliency map for chapter 4's exercise; one is defensible."""


def _signed_share(maps: np.ndarray, masks: np.ndarray) -> float:
    """The share computed WITHOUT absolute values (a common slip), for the hint."""
    maps = np.asarray(maps, dtype=np.float64)
    inside = (maps * np.asarray(masks, bool)).reshape(len(maps), -1).sum(1)
    total = maps.reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(inside / total))


def check_saliency_reading(share_in_lungs: float, lung_area: float, verdict: str,
                           maps: np.ndarray, masks: np.ndarray) -> None:
    """Self-check for "interpret a saliency map": the two numbers (plain floats) and the chosen
    reading (a plain ``str``, a key of :data:`VERDICTS`)."""
    from cxrlab.toolbox.checks import require_number, require_plain_str

    share = require_number(share_in_lungs, "share_in_lungs")
    area = require_number(lung_area, "lung_area")
    truth_share = float(region_fraction(maps, masks).mean())
    truth_area = float(np.asarray(masks, dtype=float).mean())
    area_hint = (" That is a pixel COUNT; the share is the mean of the boolean masks."
                 if area > 1 else " The share of all pixels that are lung: the mean of the boolean masks.")
    require(abs(area - truth_area) < 1e-3, f"lung_area = {area:.3f}, expected {truth_area:.3f}.{area_hint}")
    signed = _signed_share(maps, masks)
    share_hint = (" Attributions can be negative: take their absolute value before summing "
                  "(saliency.region_fraction does)." if abs(share - signed) < 1e-6 else
                  " Use saliency.region_fraction(maps, masks).mean(): attribution inside the "
                  "lungs over the total, per image, then the mean.")
    require(abs(share - truth_share) < 1e-3,
            f"share_in_lungs = {share:.3f}, expected {truth_share:.3f}.{share_hint}")
    require_plain_str(verdict, "verdict", list(VERDICTS))
    ratio = truth_share / max(truth_area, 1e-9)
    require(str.__eq__(verdict, "sensitivity"), (
        f"reconsider {verdict!r}: the lungs hold {truth_share:.0%} of the attribution for "
        f"{truth_area:.0%} of the pixels (ratio {ratio:.1f}). Does *where* a gradient is large "
        "tell you *what* the model uses there? And what did the randomised-weights check show?"))
    passed(f"Correct: the lungs hold {truth_share:.0%} of the attribution on {truth_area:.0%} of the "
          f"pixels (x{ratio:.1f}), which says where the model is sensitive, not what it reads.")
