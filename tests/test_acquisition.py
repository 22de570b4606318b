"""Test-time window width and field of view (chapter 6, part 1)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.toolbox import acquisition as A


def test_window_narrows_and_widens_around_the_level():
    x = torch.tensor([0.2, 0.5, 0.8])
    assert torch.allclose(A.window(x, 0.5), torch.tensor([0.0, 0.5, 1.0]))     # clipped at the ends
    wide = A.window(x, 2.0)
    assert torch.allclose(wide, torch.tensor([0.35, 0.5, 0.65]))
    with pytest.raises(ValueError):
        A.window(x, 0.0)


def test_field_of_view_crops_or_pads_around_the_centre():
    x = torch.zeros(1, 1, 16, 16)
    x[..., 6:10, 6:10] = 1.0                       # a bright square in the centre
    zoomed = A.field_of_view(x, 2.0)               # narrower field of view: the square grows
    assert float(zoomed.mean()) > 3.5 * float(x.mean())
    shrunk = A.field_of_view(torch.ones(1, 1, 16, 16), 0.5)
    assert float(shrunk[..., 0, :].max()) == 0.0   # a black border appears
    assert float(shrunk[..., 8, 8]) == pytest.approx(1.0)
    assert torch.allclose(A.field_of_view(x, 1.0), x, atol=1e-6)


def test_acquisition_grid_is_zero_at_the_default_and_balanced_over_groups():
    calls = []

    def predict(images, transform=None):
        calls.append(transform)
        batch = torch.as_tensor(images, dtype=torch.float32)[:, None] / 255
        if transform is not None:
            batch = transform(batch)
        brightness = batch.mean(dim=(1, 2, 3)).numpy()
        return np.c_[brightness, 1 - brightness]

    images = np.full((6, 8, 8), 100, np.uint8)
    images[:2] = 200
    grid = A.acquisition_grid(predict, images, ["A", "A", "B", "B", "B", "B"], ["A", "B"],
                              widths=(1.0, 2.0), zooms=(1.0, 0.5), progress=False)
    assert len(grid) == 2 * 2 * 2 and len(calls) == 1 + 3     # the default is scored once
    default = grid[(grid["width"] == 1.0) & (grid["zoom"] == 1.0)]
    assert np.allclose(default["change"], 0.0)
    padded = grid[(grid["width"] == 1.0) & (grid["zoom"] == 0.5) & (grid["class"] == "A")]
    assert float(padded["change"].iloc[0]) < 0                # black border: darker on average
    base = default[default["class"] == "A"]["mean_score"].iloc[0]
    assert base == pytest.approx((200 / 255 + 100 / 255) / 2)  # each group weighs the same


def test_view_mix_rows_sum_to_one():
    frame = pd.DataFrame({"race": ["A", "A", "B", "B", "B", None],
                          "view": ["AP", "PA", "PA", "PA", "AP", "AP"]})
    mix = A.view_mix(frame)
    assert np.allclose(mix.sum(axis=1), 1.0)
    assert mix.loc["B", "PA"] == pytest.approx(2 / 3)
