"""Bottom-up-attention features: the shared box rule, the torchvision backend, the detectron2 backend."""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.butd import BoxRule, build_extractor, select_boxes, to_original_pixels
from pipeline.precision import resolve_precision
from pipeline.weights import WeightsNotFoundError


def spread_boxes(n):
    """n disjoint 10x10 boxes on a row: NMS never suppresses one of them."""
    x = torch.arange(n, dtype=torch.float32) * 20
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)


# ---------------------------------------------------------------- box rule
def test_exactly_36_of_many_confident_boxes_highest_first():
    scores = torch.linspace(0.3, 0.9, 50)[:, None]            # 50 proposals above the 0.2 threshold
    keep, max_conf = select_boxes(spread_boxes(50), scores, BoxRule())
    assert keep.tolist() == list(range(49, 13, -1))           # the top 36 by confidence, highest first
    assert torch.equal(max_conf, scores[:, 0])


def test_boxes_go_back_to_original_pixels_clamped_to_the_image():
    image = Image.new("RGB", (300, 200))  # resized by the detector to 600 x 400 (height, width: 400, 600)
    boxes = torch.tensor([[60.0, 40.0, 300.0, 200.0], [-10.0, 0.0, 700.0, 500.0]])
    assert to_original_pixels(boxes, (400, 600), image).tolist() == [[30.0, 20.0, 150.0, 100.0],
                                                                     [0.0, 0.0, 300.0, 200.0]]


def test_too_few_confident_boxes_are_topped_up_to_min_boxes():
    scores = torch.full((40, 1), 0.05)
    scores[[3, 7], 0] = torch.tensor([0.5, 0.3])
    scores[11, 0] = 0.1
    keep, _ = select_boxes(spread_boxes(40), scores, BoxRule(min_boxes=36, max_boxes=36))
    assert len(keep) == 36 and keep[:3].tolist() == [3, 7, 11]


def test_adaptive_rule_keeps_every_box_over_threshold_in_proposal_order():
    scores = torch.full((150, 1), 0.1)
    confident = torch.arange(0, 150, 3)                        # 50 proposals
    scores[confident, 0] = 0.2                                 # exactly at the threshold counts
    rule = BoxRule(min_boxes=10, max_boxes=100)
    keep, _ = select_boxes(spread_boxes(150), scores, rule)
    assert keep.tolist() == confident.tolist()
    scores[:, 0] = torch.linspace(0.21, 0.99, 150)            # 150 over threshold -> capped at 100
    keep, _ = select_boxes(spread_boxes(150), scores, rule)
    assert keep.tolist() == list(range(149, 49, -1))
    scores[:, 0] = 0.01                                        # none over threshold -> the top 10
    scores[140, 0] = 0.015
    keep, _ = select_boxes(spread_boxes(150), scores, rule)
    assert len(keep) == 10 and keep[0].item() == 140


def test_per_class_nms_gives_a_suppressed_box_only_the_classes_where_it_survives():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], dtype=torch.float32)  # 0, 1 overlap
    scores = torch.tensor([[0.9, 0.1],    # box 0 wins class 0 over box 1
                           [0.8, 0.3],    # box 1 is suppressed in class 0 but wins class 1
                           [0.5, 0.05]])
    _, max_conf = select_boxes(boxes, scores, BoxRule(min_boxes=1, max_boxes=3))
    assert max_conf.tolist() == pytest.approx([0.9, 0.3, 0.5])
    # IoU of boxes 0 and 1 is 10/11 > 0.3; with nms_iou above it neither is suppressed.
    _, max_conf = select_boxes(boxes, scores, BoxRule(min_boxes=1, max_boxes=3, nms_iou=0.95))
    assert max_conf.tolist() == pytest.approx([0.9, 0.8, 0.5])


def test_all_class_nms_matches_torchvision_nms_class_by_class():
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(0)
    corners = torch.rand(80, 2, generator=g) * 100
    boxes = torch.cat([corners, corners + torch.rand(80, 2, generator=g) * 60 + 1], dim=1)  # many overlaps
    scores = torch.rand(80, 25, generator=g).softmax(dim=1)
    _, max_conf = select_boxes(boxes, scores, BoxRule())
    expected = torch.zeros(80)
    for c in range(25):
        kept = nms(boxes, scores[:, c], 0.3)
        expected[kept] = torch.maximum(expected[kept], scores[kept, c])
    assert torch.equal(max_conf, expected)


def test_box_rule_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_boxes"):
        BoxRule(min_boxes=40, max_boxes=36)
    with pytest.raises(ValueError, match="conf_threshold"):
        BoxRule(conf_threshold=1.5)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown BUTD backend 'caffe'.*detectron2.*torchvision"):
        build_extractor(backend="caffe")


# ---------------------------------------------------------------- torchvision backend
def photos():
    """Two small natural photos of different shapes (scikit-image's bundled samples)."""
    from skimage import data

    return [Image.fromarray(data.astronaut()).resize((256, 256)), Image.fromarray(data.coffee()).resize((240, 160))]


SMALL = dict(weights="random", seed=3, device="cpu", min_size=320, max_size=480)  # real architecture, small input


@pytest.fixture(scope="module")
def torchvision_run():
    extractor = build_extractor(backend="torchvision", **SMALL)
    return extractor, extractor.extract(photos())


def test_torchvision_outputs_shapes_dtypes_and_finite_features(torchvision_run):
    extractor, outputs = torchvision_run
    assert len(outputs) == 2
    for out, image in zip(outputs, photos()):
        assert out["features"].shape == (36, 2048) and out["features"].dtype == np.float32
        assert np.isfinite(out["features"]).all() and np.abs(out["features"]).max() < 65504
        assert out["features"].std() > 0
        assert out["boxes"].shape == (36, 4) and out["boxes"].dtype == np.float32
        boxes = out["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert out["objects"].shape == (36,) and out["objects"].dtype == np.int64
        assert ((out["objects"] >= 0) & (out["objects"] < len(extractor.provenance()["object_vocab"]))).all()
        assert ((out["object_scores"] > 0) & (out["object_scores"] <= 1)).all()
        assert (out["attributes"] == -1).all() and np.isnan(out["attribute_scores"]).all()


def test_torchvision_provenance_is_json_and_stamps_random_weights(torchvision_run):
    extractor, _ = torchvision_run
    prov = json.loads(json.dumps(extractor.provenance()))
    assert prov["backend"] == "torchvision" and prov["random_weights"] is True
    assert prov["weights"] == "random(seed=3)" and prov["weights_sha256"] == ""
    assert prov["box_rule"]["max_boxes"] == 36 and prov["box_rule"]["conf_threshold"] == 0.2
    assert prov["input_min_size"] == 320 and prov["proposals"]["rpn_post_nms_top_n"] == 300
    auto = resolve_precision("auto", torch.device("cpu"))
    assert (prov["precision"], prov["precision_requested"], prov["precision_reason"]) == \
        (auto.name, "auto", auto.reason)
    assert len(prov["object_vocab"]) == 90 and prov["object_vocab"][0] == "person"


def test_torchvision_is_deterministic_with_a_seed(torchvision_run):
    _, outputs = torchvision_run
    again = build_extractor(backend="torchvision", **SMALL).extract(photos()[:1])
    for name in ("features", "boxes", "objects"):
        np.testing.assert_array_equal(again[0][name], outputs[0][name])


def test_torchvision_adaptive_rule_in_fp32_over_fewer_proposals():
    extractor = build_extractor(backend="torchvision", max_boxes=100, min_boxes=10, precision="fp32",
                                num_proposals=60, **SMALL)
    adaptive = extractor.extract(photos()[:1])[0]
    assert extractor.provenance()["proposals"]["rpn_post_nms_top_n"] == 60
    assert 10 <= len(adaptive["boxes"]) <= 60
    assert adaptive["features"].shape == (len(adaptive["boxes"]), 2048)


def test_non_rgb_image_is_rejected(torchvision_run):
    extractor, _ = torchvision_run
    with pytest.raises(ValueError, match="image 1: expected a PIL image in mode RGB, got L"):
        extractor.extract([photos()[0], photos()[1].convert("L")])


def test_missing_weights_file_names_the_file(tmp_path):
    missing = tmp_path / "frcnn-coco.pth"
    with pytest.raises(WeightsNotFoundError, match="frcnn-coco.pth"):
        build_extractor(backend="torchvision", weights=str(missing), device="cpu")


# ---------------------------------------------------------------- detectron2 backend
needs_detectron2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                                      reason="detectron2 is not installed (optional backend; CI has none)")
# The real R101-C4 architecture, with a small input and 48 proposals (not 300) to keep CPU cost low.
D2_SMALL = dict(weights="random", seed=1, device="cpu", min_size=200, max_size=333, num_proposals=48)


@pytest.fixture(scope="module")
def detectron2_run():
    extractor = build_extractor(backend="detectron2", **D2_SMALL)
    return extractor, extractor.extract(photos()[:1])


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_outputs_36_finite_boxes_with_objects_and_attributes(detectron2_run):
    extractor, outputs = detectron2_run
    out, image = outputs[0], photos()[0]
    assert out["features"].shape == (36, 2048) and out["features"].dtype == np.float32
    assert np.isfinite(out["features"]).all() and np.abs(out["features"]).max() < 65504
    boxes = out["boxes"]
    assert boxes.shape == (36, 4) and (boxes >= 0).all()
    assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()
    assert ((out["objects"] >= 0) & (out["objects"] < 1600)).all()
    assert ((out["attributes"] >= 0) & (out["attributes"] < 400)).all()
    assert ((out["attribute_scores"] > 0) & (out["attribute_scores"] <= 1)).all()
    prov = json.loads(json.dumps(extractor.provenance()))
    assert prov["backend"] == "detectron2" and prov["random_weights"] is True
    assert len(prov["object_vocab"]) == 1600 and len(prov["attribute_vocab"]) == 400


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_model_has_the_bottom_up_attention_architecture(detectron2_run):
    extractor, _ = detectron2_run
    model = extractor.model
    res5 = model.roi_heads.res5
    assert res5[0].conv2.stride == (1, 1) and all(block.conv2.dilation == (2, 2) for block in res5)
    assert model.roi_heads.box_predictor.cls_score.out_features == 1601
    assert model.roi_heads.attribute_head.attr_linear2.out_features == 401
    assert model.proposal_generator.rpn_head.conv.out_channels == 512
    stem_out = model.backbone.stem(torch.zeros(1, 3, 64, 64))   # conv stride 2 -> 32, caffe max-pool (ceil) -> 16
    assert stem_out.shape[-2:] == (16, 16)


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_missing_weights_file_names_the_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="faster_rcnn_from_caffe_attr.pkl"):
        build_extractor(backend="detectron2", weights=str(tmp_path / "faster_rcnn_from_caffe_attr.pkl"), device="cpu")


def test_detectron2_weights_placed_elsewhere_are_checked_there_before_anything_reads_them(tmp_path):
    """`weights_place` (the tagger's `locate butd=PATH`): the placed file is the one checked, before detectron2 is
    imported or the pickle read (so this needs no detectron2)."""
    from pipeline.shards import sha256_file
    from pipeline.weights import WeightsNotTrustedError

    placed = tmp_path / "moved" / "faster_rcnn_from_caffe_attr.pkl"
    placed.parent.mkdir()
    placed.write_bytes(b"not the recorded pickle")
    recorded = str(tmp_path / "recorded" / "faster_rcnn_from_caffe_attr.pkl")
    with pytest.raises(WeightsNotTrustedError, match=rf"{re.escape(str(placed))} is a pickle file.*this file's is "
                                                     rf"{sha256_file(placed)}"):
        build_extractor(backend="detectron2", weights=recorded, weights_place=str(placed), device="cpu")
    with pytest.raises(WeightsNotTrustedError, match=rf"{re.escape(str(placed))} has sha256 {sha256_file(placed)}, "
                                                     rf"not the configured {'ab' * 32}"):
        build_extractor(backend="detectron2", weights=recorded, weights_place=str(placed), weights_sha256="ab" * 32,
                        device="cpu")
    with pytest.raises(WeightsNotFoundError, match="faster_rcnn_from_caffe_attr.pkl"):
        build_extractor(backend="detectron2", weights=recorded, device="cpu")


# ---------------------------------------------------------------- torchvision backend's fast pieces
def random_boxes(n, width, height, seed):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.9
    size = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.6 + 0.5
    return torch.cat([corner, torch.minimum(corner + size, torch.tensor([width, height]))], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gather_equals_torchvision_roi_align(aligned):
    from torchvision.ops import roi_align

    from pipeline.butd.torchvision_backend import roi_align_gather

    feature = torch.randn(1, 24, 19, 25, generator=torch.Generator().manual_seed(0))
    boxes = random_boxes(30, 400, 304, seed=1)
    boxes[0] = torch.tensor([-50.0, -40.0, 600.0, 500.0])     # samples beyond the map read nothing
    boxes[1] = torch.tensor([100.0, 100.0, 100.0, 100.0])     # empty box (legacy mode widens it to 1 pixel)
    boxes[2] = torch.tensor([390.0, 290.0, 420.0, 330.0])     # over the last row and column (clamped)
    expected = roi_align(feature, [boxes], output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=aligned)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = roi_align_gather(feature.contiguous(memory_format=layout), boxes, 7, 1 / 16, 2, aligned=aligned)
        assert got.shape == (30, 24, 7, 7)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["BatchNorm2d", "FrozenBatchNorm2d"])
def test_fold_batch_norms_keeps_a_resnet_the_same_function(norm):
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops.misc import FrozenBatchNorm2d

    from pipeline.butd.torchvision_backend import fold_batch_norms

    torch.manual_seed(0)
    norm_layer = {"BatchNorm2d": torch.nn.BatchNorm2d, "FrozenBatchNorm2d": FrozenBatchNorm2d}[norm]
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, norm_layer=norm_layer).eval()
    norms = [m for m in model.modules() if isinstance(m, norm_layer)]
    for m in norms:                                # trained-looking statistics, far from the identity
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.5, 0.5)
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fold_batch_norms(model)
        got = model(x)
    assert not any(isinstance(m, norm_layer) for m in model.modules())
    assert sum(isinstance(m, torch.nn.Identity) for m in model.modules()) == len(norms) == 17
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pool_proposals_equals_the_detectors_multiscale_roi_align():
    from torchvision.ops import MultiScaleRoIAlign

    from pipeline.butd.torchvision_backend import pool_proposals

    g = torch.Generator().manual_seed(2)
    image_size = (256, 320)                                     # height, width of the resized image
    pyramid = {name: torch.randn(1, 8, 256 // stride, 320 // stride, generator=g)
               for name, stride in (("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64))}
    boxes = random_boxes(60, 320, 256, seed=3)
    boxes[:5, 2:] = boxes[:5, :2] + 300                         # large boxes go to the coarsest level
    expected = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(pyramid, [boxes], [image_size])
    got = pool_proposals(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), pyramid, [boxes], [image_size])
    assert got.shape == (60, 8, 7, 7)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_stage_seconds_cover_every_stage(torchvision_run):
    from pipeline.butd.torchvision_backend import STAGES

    extractor, _ = torchvision_run
    assert tuple(extractor.stage_seconds) == STAGES
    assert all(seconds > 0 for name, seconds in extractor.stage_seconds.items() if name != "box rule")


def save_checkpoint(state_dict, path):
    torch.save({"model": state_dict}, path)
    return str(path)


D2_FROM_FILE = dict(device="cpu", min_size=200, max_size=333, num_proposals=48)


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_checkpoint_loads_back_to_the_same_features(detectron2_run, tmp_path):
    extractor, outputs = detectron2_run
    path = save_checkpoint(extractor.model.state_dict(), tmp_path / "butd-r101-k36.pth")
    loaded = build_extractor(backend="detectron2", weights=path, **D2_FROM_FILE)
    again = loaded.extract(photos()[:1])[0]
    for name in ("features", "boxes", "objects", "attributes"):
        np.testing.assert_array_equal(again[name], outputs[0][name])
    prov = loaded.provenance()
    assert prov["random_weights"] is False and len(prov["weights_sha256"]) == 64
    assert prov["weights_unused_keys"] == []
    # the file moved, given by its place (`locate butd=PATH`): the same features, the provenance the recorded one
    placed = Path(path).rename(tmp_path / "moved.pth")
    moved = build_extractor(backend="detectron2", weights=path, weights_place=str(placed), **D2_FROM_FILE)
    np.testing.assert_array_equal(moved.extract(photos()[:1])[0]["features"], outputs[0]["features"])
    assert moved.provenance()["weights"] == str(Path(path).resolve())
    assert moved.provenance()["weights_sha256"] == prov["weights_sha256"]


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_checkpoint_that_leaves_weights_unloaded_is_an_error(detectron2_run, tmp_path):
    from pipeline.butd.detectron2_backend import IncompatibleWeightsError

    extractor, _ = detectron2_run
    state = dict(extractor.model.state_dict())
    del state["roi_heads.attribute_head.attr_linear2.weight"]                  # a head layer absent
    state["backbone.res2.0.conv1.kernel"] = state.pop("backbone.res2.0.conv1.weight")   # a renamed one
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(81)          # a COCO-sized classifier
    path = save_checkpoint(state, tmp_path / "other.pth")
    with pytest.raises(IncompatibleWeightsError) as error:
        build_extractor(backend="detectron2", weights=path, **D2_FROM_FILE)
    message = str(error.value)
    assert "other.pth" in message and "2 missing" in message
    assert "roi_heads.attribute_head.attr_linear2.weight" in message and "backbone.res2.0.conv1.weight" in message
    assert "1 of another shape: roi_heads.box_predictor.cls_score.bias (file (81,), model (1601,))" in message


@pytest.mark.detectron2
@needs_detectron2
def test_detectron2_checkpoint_with_extra_keys_loads_and_records_them(detectron2_run, tmp_path):
    extractor, _ = detectron2_run
    state = dict(extractor.model.state_dict())
    state["roi_heads.mask_head.predictor.weight"] = torch.zeros(3)                  # not in this model
    state["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(12, 4)  # old checkpoints: harmless
    loaded = build_extractor(backend="detectron2", weights=save_checkpoint(state, tmp_path / "extra.pth"),
                             **D2_FROM_FILE)
    assert loaded.provenance()["weights_unused_keys"] == ["roi_heads.mask_head.predictor.weight"]
