"""Models: one-channel input, output shapes, embeddings, ImageNet fallback when offline."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from cxrlab.core import models


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "resnet34", "densenet121"])
def test_output_and_feature_shapes(name):
    model = models.build_model(name, n_outputs=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 3) and model.arch == name and model.pretrained is False
    feats = models.embed(model, np.zeros((3, 32, 32), np.uint8), batch_size=2)
    assert feats.shape == (3, model.n_features) and feats.dtype == np.float32
    assert {"smallcnn": 128, "resnet18": 512, "resnet34": 512, "densenet121": 1024}[name] \
        == model.n_features


def test_unknown_name_and_outputs():
    with pytest.raises(ValueError, match="resnet18"):
        models.build_model("vgg", 2)
    with pytest.raises(ValueError, match="n_outputs"):
        models.build_model("smallcnn", 0)


def test_pretrained_falls_back_when_offline(monkeypatch, tmp_path, capsys):
    import torchvision.models._api as api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    model = models.build_model("resnet18", 2, pretrained=True)
    message = capsys.readouterr().out
    assert "Could not download ImageNet weights for resnet18" in message
    assert "from scratch" in message
    assert model.pretrained is False and model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_pretrained_first_conv_sums_rgb(monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(models, "download_imagenet_weights", lambda name: reference)
    model = models.build_model("resnet18", 2, pretrained=True)
    assert model.pretrained is True
    conv = model.backbone.conv1.weight
    assert conv.shape == (64, 1, 7, 7)
    torch.testing.assert_close(conv, reference["conv1.weight"].sum(dim=1, keepdim=True))
    assert abs(float(model.input_mean) - models.IMAGENET_GREY_MEAN) < 1e-6
