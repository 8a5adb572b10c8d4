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


def test_an_entry_placed_outside_the_cache_loads_from_there_under_the_entry_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.SqueezeNet1_1_Weights
    reference, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "random:3", "x")
    cached = weights.cache_checkpoint_path(enum.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    _, from_cache = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "IMAGENET1K_V1", "x")
    placed = tmp_path / "elsewhere.pth"
    cached.rename(placed)
    model, info = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "IMAGENET1K_V1", "x",
                                                 place=placed)
    assert info == from_cache and info.name == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    # a moved local file: named as the spec, read from its place
    _, info = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, str(tmp_path / "gone.pth"), "x",
                                             place=placed)
    assert info.name == str((tmp_path / "gone.pth").resolve()) and info.sha256 == from_cache.sha256
    with pytest.raises(weights.WeightsNotFoundError, match=r"'nowhere\.pth' not found.*given as the place of "
                                                           r"SqueezeNet1_1_Weights\.IMAGENET1K_V1"):
        weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "IMAGENET1K_V1", "x",
                                       place=tmp_path / "nowhere.pth")


def test_loaded_weights_skip_the_random_init_they_replace(tmp_path, monkeypatch):
    enum = torchvision.models.SqueezeNet1_1_Weights
    reference, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, "random:3", "x")
    path = tmp_path / "squeezenet.pth"
    torch.save(reference.state_dict(), path)
    initialised = []
    for name in ("kaiming_uniform_", "normal_", "uniform_", "constant_"):
        real = getattr(torch.nn.init, name)

        def counting(tensor, *args, _real=real, **kwargs):
            initialised.extend([tensor] if not tensor.is_meta else [])
            return _real(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.nn.init, name, counting)
    model, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1, enum, str(path), "x")
    assert initialised == []                                      # no real tensor was randomly initialised
    assert weights._meta_tensors(model) == []
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))


def test_a_module_making_its_own_tensors_is_built_the_ordinary_way():
    class WithTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("table", torch.arange(3.0), persistent=False)   # not in the state dict

        def forward(self, x):
            return self.linear(x + self.table)

    state = WithTable().state_dict()
    model = weights.build_loaded(WithTable, state)
    assert weights._meta_tensors(model) == [] and torch.equal(model.table, torch.arange(3.0))
    assert torch.equal(model.linear.weight, state["linear.weight"])


def test_same_seed_gives_same_random_weights():
    a, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                          torchvision.models.SqueezeNet1_1_Weights, "random:5", "x")
    b, _ = weights.load_torchvision_model(torchvision.models.squeezenet1_1,
                                          torchvision.models.SqueezeNet1_1_Weights, "random:5", "x")
    assert a.state_dict().keys() == b.state_dict().keys() and len(a.state_dict()) > 0
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- VGG-16 grids (real architecture, random weights) ----

from PIL import Image  # noqa: E402
import skimage.data  # noqa: E402

from pipeline.vgg import VGGConfig, VGGGridExtractor  # noqa: E402


def _photos():
    return [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee()).convert("L")]


@pytest.fixture(scope="module")
def fp32_extractor():
    return VGGGridExtractor(VGGConfig(weights="random:0", precision="fp32", batch_size=2))


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_grids_shape_dtype_layout_and_preprocessing(fp32_extractor):
    images = _photos()
    grids = fp32_extractor.extract(images)
    assert grids.shape == (2, 49, 512) and grids.dtype == np.float16
    # The same computation by hand: LANCZOS 224x224, ImageNet normalisation, features+avgpool, row-major grid.
    array = np.asarray(images[1].convert("RGB").resize((224, 224), Image.LANCZOS), np.float32) / 255
    x = (torch.from_numpy(array).permute(2, 0, 1) - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        fmap = fp32_extractor.net(x[None])[0]          # (512, 7, 7)
    assert fmap.shape == (512, 7, 7)
    np.testing.assert_allclose(grids[1, 3 * 7 + 5], fmap[:, 3, 5].numpy(), rtol=2e-3, atol=2e-3)
    attrs = fp32_extractor.provenance()
    meta = json.loads(attrs["vgg_meta"])
    assert attrs["vgg_weights"] == "random(seed=0)" and attrs["vgg_weights_sha256"] == ""
    assert meta["resize"] == "lanczos" and meta["precision"] == "fp32" and meta["grid"] == [7, 7, 512]
    assert meta["reference_weights"] == "VGG16_Weights.IMAGENET1K_V1"


def test_random_weights_are_vgg16s_layers_initialised_as_torchvision_does():
    from pipeline.vgg import random_features

    features, info = random_features(4)
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).features
    assert [(type(m), getattr(m, "weight", torch.empty(0)).shape) for m in features] == \
        [(type(m), getattr(m, "weight", torch.empty(0)).shape) for m in reference]
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:          # kaiming normal, fan_out, ReLU gain: sd sqrt(2 / (out_channels x 3 x 3)); bias 0
        expected = (2 / (conv.out_channels * 9)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05) and not conv.bias.any()
    again, _ = random_features(4)
    other, _ = random_features(5)
    assert torch.equal(convs[0].weight, again[0].weight) and not torch.equal(convs[0].weight, other[0].weight)
    assert info.name == "random(seed=4)" and info.random and info.meta["init"].startswith("convolutional layers only")


def test_forced_bf16_grids_within_cosine_0999_of_fp32(fp32_extractor):
    images = _photos()
    reference = fp32_extractor.extract(images)
    bf16 = VGGGridExtractor(VGGConfig(weights="random:0", precision="bf16", batch_size=2))
    assert bf16.precision.name == "bf16"
    assert json.loads(bf16.provenance()["vgg_meta"])["precision"] == "bf16"
    assert _cosine(bf16.extract(images), reference).min() >= 0.999


def test_auto_without_native_bf16_runs_fp32_and_records_why(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    auto = VGGGridExtractor(VGGConfig(weights="random:0", precision="auto", device="cpu", batch_size=2))
    meta = json.loads(auto.provenance()["vgg_meta"])
    assert meta["precision"] == "fp32" and meta["precision_requested"] == "auto"
    assert meta["precision_reason"].startswith("CPU without native bf16")


def test_smaller_image_size_keeps_the_grid_shape():
    small = VGGGridExtractor(VGGConfig(weights="random:0", precision="fp32", image_size=112, batch_size=2))
    image = _photos()[0]
    assert small.preprocess(image).shape == (3, 112, 112)
    grids = small.extract([image])
    assert grids.shape == (1, 49, 512) and np.isfinite(grids.astype(np.float32)).all()
    assert json.loads(small.provenance()["vgg_meta"])["image_size"] == 112
    with pytest.raises(ValueError, match="image_size applies to resize=lanczos only"):
        VGGGridExtractor(VGGConfig(weights="random:0", resize="weights", image_size=112))


def test_weights_transform_option_crops_like_torchvision(fp32_extractor):
    image = _photos()[0]
    fp32_extractor.config.resize = "weights"
    try:
        cropped = fp32_extractor.preprocess(image)
    finally:
        fp32_extractor.config.resize = "lanczos"
    expected = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()(image)
    assert torch.equal(cropped, expected) and cropped.shape == (3, 224, 224)


def test_an_unchanged_file_is_hashed_once_and_a_changed_one_again(tmp_path, monkeypatch):
    import hashlib
    import os

    from pipeline import shards

    reads, real = [], hashlib.sha256

    class Counting:
        def __init__(self):
            self.digest = real()

        def update(self, chunk):
            reads.append(len(chunk))
            self.digest.update(chunk)

        def hexdigest(self):
            return self.digest.hexdigest()

    monkeypatch.setattr(shards.hashlib, "sha256", Counting)
    path = tmp_path / "w.pt"
    path.write_bytes(b"a" * 100)
    # written just now: hashed every time, so a rewrite of the same size within one clock tick is seen
    assert shards.sha256_file(path) == real(b"a" * 100).hexdigest()
    path.write_bytes(b"b" * 100)
    assert shards.sha256_file(path) == real(b"b" * 100).hexdigest()
    assert len(reads) == 2

    monkeypatch.setattr(shards, "_RACY_NS", -10**18)    # as if written long ago
    reads.clear()
    assert shards.sha256_file(path) == shards.sha256_file(path) == real(b"b" * 100).hexdigest()
    assert len(reads) == 1
    with open(path, "r+b") as f:                        # changed in place, same size
        f.write(b"c")
    os.utime(path, ns=(1, 1))
    assert shards.sha256_file(path) == real(b"c" + b"b" * 99).hexdigest()
    assert len(reads) == 2
