"""Weights loading (pipeline/weights.py) and VGG-16 grids (pipeline/vgg.py)."""
import json

import numpy as np
import pytest
import torch
import torchvision

from pipeline import weights


def test_random_spec_parsing():
    assert weights.random_seed("random") == 0
    assert weights.random_seed("random:7") == 7
    assert weights.random_seed("IMAGENET1K_V1") is None
    assert weights.random_seed("/x/random.pth") is None


def test_missing_cache_weights_name_file_place_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(weights.WeightsNotFoundError) as err:
        weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                       torchvision.models.SqueezeNet1_1_Weights, "IMAGENET1K_V1", "test net")
    message = str(err.value)
    entry = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    assert "squeezenet1_1-b8a52dc0.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert entry.url in message and "test net" in message


def test_missing_local_file(tmp_path):
    with pytest.raises(weights.WeightsNotFoundError, match="nothere.pth"):
        weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                       torchvision.models.SqueezeNet1_1_Weights, str(tmp_path / "nothere.pth"), "x")


def test_cache_and_local_file_load_the_same_weights_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision.models.SqueezeNet1_1_Weights
    reference, info = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "random:3", "x")
    assert info.random and info.name == "random(seed=3)" and info.sha256 == ""
    path = weights.cache_checkpoint_path(enum.IMAGENET1K_V1.url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    for spec in ("IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", str(path)):
        model, info = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, spec, "x")
        assert not info.random
        assert info.sha256 == weights.sha256_file(path)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
            assert torch.equal(a, b)
    cached, info = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "IMAGENET1K_V1", "x")
    attrs = info.attrs("vgg")
    assert attrs["vgg_weights"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    meta = json.loads(attrs["vgg_meta"])
    assert meta["num_categories"] == 1000 and "ImageClassification" in meta["transforms"]


def test_same_seed_gives_same_random_weights():
    a, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                          torchvision.models.SqueezeNet1_1_Weights, "random:5", "x")
    b, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                          torchvision.models.SqueezeNet1_1_Weights, "random:5", "x")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
