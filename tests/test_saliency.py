"""Saliency: shapes, and the randomisation check on a model that must look at a known region."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.toolbox import saliency as S

SIZE = 16
REGION = (slice(2, 6), slice(2, 6))


def region_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION] = True
    return mask


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; the label is whether the 4x4 region is bright (nothing else carries it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 0, REGION[0], REGION[1]] += 0.4 * y[:, None, None].float()
    return x, y


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * SIZE * SIZE, 2))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_model()
    x, y = make_data(512, 0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(); loss.backward(); opt.step()
    xt, yt = make_data(64, 1)
    accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.95, f"the tiny model did not learn the region ({accuracy:.2f})"
    return model.eval(), xt[:16], yt[:16]


@pytest.mark.parametrize("method", S.METHODS)
def test_maps_have_image_shape_and_accept_uint8(trained, method):
    model, x, y = trained
    maps = S.attribute(model, x, y, method, n_steps=8)
    assert maps.shape == (16, SIZE, SIZE) and maps.dtype == np.float32
    assert (maps >= 0).all()
    as_uint8 = (x[:, 0].numpy() * 255).astype(np.uint8)
    assert S.attribute(model, as_uint8, 1, method, n_steps=8).shape == (16, SIZE, SIZE)


def test_unknown_method_and_bad_targets(trained):
    model, x, _ = trained
    with pytest.raises(ValueError, match="unknown saliency method"):
        S.attribute(model, x, 0, "tea-leaves")
    with pytest.raises(ValueError, match="class indices"):
        S.attribute(model, x, -1)


def test_trained_maps_point_at_the_region(trained):
    model, x, y = trained
    for method in S.METHODS:
        share = S.region_fraction(S.attribute(model, x, y, method, n_steps=16), region_mask()).mean()
        assert share > 0.25, f"{method}: only {share:.2f} of the attribution in the 6% region (chance 0.06)"


def test_randomised_weights_give_dissimilar_maps(trained):
    model, x, y = trained
    rho_random = S.randomization_check(model, x, y, "gradient")
    assert rho_random < 0.3, rho_random
    self_rho = S.rank_correlation(S.attribute(model, x, y), S.attribute(model, x, y)).mean()
    assert self_rho == pytest.approx(1.0)
    random_model = S.randomize_weights(model)
    share_random = S.region_fraction(S.attribute(random_model, x, y), region_mask()).mean()
    share_trained = S.region_fraction(S.attribute(model, x, y), region_mask()).mean()
    assert share_trained > 3 * share_random


def test_randomize_weights_copies_and_leaves_rng_alone(trained):
    model, _, _ = trained
    before = [p.clone() for p in model.parameters()]
    state = torch.random.get_rng_state()
    clone = S.randomize_weights(model, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, clone.parameters()))
    assert S.parameter_layers(model) == ["0", "2", "5"]
    only_head = S.randomize_weights(model, ["5"])
    assert torch.equal(only_head[0].weight, model[0].weight)
    with pytest.raises(KeyError, match="no layer"):
        S.randomize_weights(model, ["nope"])


def test_cascade_goes_from_output_to_input(trained):
    model, x, y = trained
    table = S.cascading_randomization(model, x[:8], y[:8], "gradient")
    assert list(table["layer"]) == ["(none: trained)", "5", "2", "0"]
    assert table["spearman"].iloc[0] == 1.0
    assert table["spearman"].iloc[-1] < 0.5


def test_rank_correlation_known_values():
    a = np.arange(16, dtype=float).reshape(1, 4, 4)
    np.testing.assert_allclose(S.rank_correlation(a, a ** 3), [1.0])
    np.testing.assert_allclose(S.rank_correlation(a, -a), [-1.0])
    np.testing.assert_allclose(S.rank_correlation(a, np.ones_like(a)), [0.0])


def test_tile_shares_sum_to_one():
    maps = np.random.default_rng(0).random((3, 12, 12))
    shares = S.tile_shares(maps)
    assert shares.shape == (3, 3) and shares.sum() == pytest.approx(1.0)
    one = np.zeros((1, 12, 12)); one[0, 0, 11] = 1
    assert S.tile_shares(one)[0, 2] == 1.0


def test_check_saliency_reading():
    maps = np.zeros((2, 4, 4)); maps[:, 0, 0] = 1; maps[:, 3, 3] = 1
    masks = np.zeros((2, 4, 4), bool); masks[:, :2, :2] = True
    S.check_saliency_reading(0.5, 0.25, "sensitivity", maps, masks)
    with pytest.raises(AssertionError, match="reconsider"):
        S.check_saliency_reading(0.5, 0.25, "located", maps, masks)
    with pytest.raises(AssertionError, match="share_in_lungs"):
        S.check_saliency_reading(0.9, 0.25, "sensitivity", maps, masks)
    with pytest.raises(AssertionError, match="plain number"):
        S.check_saliency_reading(np.array([0.5]), 0.25, "sensitivity", maps, masks)


def test_integrated_gradients_is_complete_when_run_in_chunks(trained, monkeypatch):
    """IG's completeness axiom: attributions sum to f(x) - f(black). It must hold when captum
    runs the interpolated copies a few at a time (the chunking that keeps chapter 4 small)."""
    model, x, y = trained
    monkeypatch.setattr(S, "IG_CHUNK", 4)
    maps = S.attribute(model, x, y, "integrated_gradients", n_steps=64, absolute=False)
    with torch.no_grad():
        scores = model(x).gather(1, y[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, y[:, None])[:, 0]
    np.testing.assert_allclose(maps.reshape(len(maps), -1).sum(axis=1), scores.numpy(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("method", S.METHODS)
def test_forward_batches_follow_the_pixel_budget(trained, monkeypatch, method):
    """Occlusion used to push 256 patched images through the model at once (1.9 GB at 128 px)."""
    from cxrlab.core import models

    model, x, y = trained
    monkeypatch.setattr(models, "INFERENCE_PIXELS", 4 * x.shape[-1] * x.shape[-2])
    sizes = []
    hook = model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    try:
        maps = S.attribute(model, x, y, method, n_steps=8)
    finally:
        hook.remove()
    assert maps.shape == (len(x), *x.shape[-2:]) and max(sizes) <= 4


def test_one_logit_binary_model_maps_both_classes():
    """A binary model with one output (sex on NIH): class 1 is the logit, class 0 its negative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    x = torch.rand(4, 1, SIZE, SIZE)
    weights = model[1].weight.detach().view(SIZE, SIZE).numpy()
    for target in (0, 1):                                  # |d logit / d pixel| either way
        assert np.allclose(S.attribute(model, x, target=target)[0], np.abs(weights), atol=1e-6)
    ig = {t: S.attribute(model, x, target=t, method="integrated_gradients", absolute=False)
          for t in (0, 1)}
    assert np.allclose(ig[1][0], x[0, 0].numpy() * weights, atol=1e-4)
    assert np.allclose(ig[0], -ig[1], atol=1e-6)           # class 0 is the negative logit
    assert S.attribute(model, x, target=[0, 1, 0, 1]).shape == (4, SIZE, SIZE)
    with pytest.raises(ValueError, match="binary"):
        S.attribute(model, x, target=2)
