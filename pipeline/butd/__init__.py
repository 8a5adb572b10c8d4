"""Bottom-up-attention (BUTD) object features: one interface, two backends picked by a config string.

    from pipeline.butd import build_extractor
    extractor = build_extractor(backend="torchvision", weights="random", device="cpu")
    outputs = extractor.extract([pil_rgb_image, ...])   # one dict of numpy arrays per image
    attrs = extractor.provenance()                      # JSON-friendly, for the shard attributes

Every backend scores ~300 region proposals per image, then applies the box rule of bottom-up attention
(`select_boxes`, the one implementation both backends share) and computes 2048-d features for the kept
proposals only. Per image the output holds K boxes (K = min_boxes..max_boxes, fewer only when the image
yields fewer proposals):

    features          (K, 2048) float32, finite and within float16 range (the shards store float16)
    boxes             (K, 4)    float32, x1 y1 x2 y2 in pixels of the original image
    objects           (K,)      int64, index into provenance()["object_vocab"]
    object_scores     (K,)      float32
    attributes        (K,)      int64, index into provenance()["attribute_vocab"]; -1 where the backend has none
    attribute_scores  (K,)      float32; NaN where the backend has none

torch, torchvision and detectron2 are imported inside functions only: Luigi forks its workers, and a CUDA
context created in the parent breaks the children.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

FEATURE_DIM = 2048
FLOAT16_MAX = float(np.finfo(np.float16).max)

# backend name -> "module:class"; the module is imported only when that backend is built.
BACKENDS = {
    "torchvision": "pipeline.butd.torchvision_backend:TorchvisionExtractor",
    "detectron2": "pipeline.butd.detectron2_backend:Detectron2Extractor",
}


@dataclass(frozen=True)
class BoxRule:
    """Which proposals become an image's boxes (Caffe `generate_tsv.py` of bottom-up attention).

    36/36 is the fixed-36 variant the paper's features use; 10/100 the adaptive one.
    """
    min_boxes: int = 36
    max_boxes: int = 36
    conf_threshold: float = 0.2
    nms_iou: float = 0.3

    def __post_init__(self):
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"box rule needs 1 <= min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"box rule needs conf_threshold in [0, 1] and nms_iou in (0, 1], got "
                             f"{self.conf_threshold}, {self.nms_iou}")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "nms": "per-class over proposals", "score": "max class confidence"}


def select_boxes(boxes, class_scores, rule: BoxRule):
    """Indices of the kept proposals, and every proposal's max confidence.

    boxes: (P, 4) float tensor x1y1x2y2; class_scores: (P, C) float tensor of foreground class probabilities
    (background column removed). For each class, NMS at `rule.nms_iou` over all proposals scored by that
    class; a proposal's confidence is the maximum score over the classes where it survives. Proposals with
    confidence >= threshold are kept in proposal order; if fewer than min_boxes (or more than max_boxes) the
    top min_boxes (max_boxes) by confidence are kept instead, highest first.
    Returns keep (K,) int64 tensor, max_conf (P,) float tensor.
    """
    import torch
    from torchvision.ops import box_iou

    boxes, class_scores = boxes.float(), class_scores.float()
    num_boxes, num_classes = class_scores.shape
    # Greedy NMS for all classes at once (the same boxes in every class, so one IoU matrix): step r visits
    # each class's r-th best proposal, keeps it unless an already kept proposal of that class suppressed it,
    # and then suppresses its overlaps in that class. Same result as torchvision.ops.nms per class (stable
    # order, suppression at IoU > nms_iou), faster than a call per class (docs/butd.md, "The box rule").
    overlaps = box_iou(boxes, boxes) > rule.nms_iou                         # (P, P)
    order = torch.argsort(class_scores, dim=0, descending=True, stable=True)  # (P, C)
    classes = torch.arange(num_classes, device=boxes.device)
    suppressed = torch.zeros(num_classes, num_boxes, dtype=torch.bool, device=boxes.device)
    survives = torch.zeros(num_classes, num_boxes, dtype=torch.bool, device=boxes.device)
    for rank in range(num_boxes):
        candidate = order[rank]                                             # (C,)
        kept = ~suppressed[classes, candidate]                              # (C,)
        survives[classes, candidate] = kept
        suppressed |= overlaps[candidate] & kept[:, None]                   # (C, P)
    max_conf = (class_scores.T * survives).max(dim=0).values                # (P,)
    keep = torch.nonzero(max_conf >= rule.conf_threshold).flatten()
    if len(keep) < rule.min_boxes:
        keep = torch.argsort(max_conf, descending=True, stable=True)[:rule.min_boxes]
    elif len(keep) > rule.max_boxes:
        keep = torch.argsort(max_conf, descending=True, stable=True)[:rule.max_boxes]
    return keep, max_conf


def to_original_pixels(boxes, resized_size: tuple[int, int], image):
    """Boxes (K, 4) as x1, y1, x2, y2 in the pixels of the resized image the detector saw (resized_size: its
    height, width) -> in the original image's pixels, clamped to it: what bottom-up attention stores."""
    height, width = resized_size
    scaled = boxes * boxes.new_tensor([image.width / width, image.height / height] * 2)
    scaled[:, 0::2] = scaled[:, 0::2].clamp(0, image.width)
    scaled[:, 1::2] = scaled[:, 1::2].clamp(0, image.height)
    return scaled


def image_output(features, boxes, object_probs, attribute_probs=None, image_index: int = 0) -> dict[str, np.ndarray]:
    """One image's output dict from tensors of its K kept boxes.

    features (K, 2048); boxes (K, 4) in original-image pixels; object_probs (K, C) foreground class
    probabilities; attribute_probs (K, A) attribute probabilities without the "no attribute" column, or None
    where the backend has no attribute head. Raises FloatingPointError where features are not finite or
    do not fit float16 (random-initialised deep ResNets overflow).
    """
    features = features.float().cpu().numpy()
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"image {image_index}: features of shape {features.shape}, expected (K, {FEATURE_DIM})")
    if not np.isfinite(features).all() or np.abs(features).max(initial=0.0) > FLOAT16_MAX:
        raise FloatingPointError(
            f"image {image_index}: BUTD features are not finite or exceed the float16 range the shards store "
            f"(max |x| = {np.abs(features[np.isfinite(features)]).max(initial=0.0):.3g}); check the weights")
    object_scores, objects = object_probs.float().max(dim=1)
    if attribute_probs is None:
        attributes = np.full(len(features), -1, dtype=np.int64)
        attribute_scores = np.full(len(features), np.nan, dtype=np.float32)
    else:
        attribute_scores, attributes = attribute_probs.float().max(dim=1)
        attributes, attribute_scores = attributes.cpu().numpy(), attribute_scores.cpu().numpy()
    return {
        "features": features,
        "boxes": boxes.float().cpu().numpy(),
        "objects": objects.cpu().numpy().astype(np.int64),
        "object_scores": object_scores.cpu().numpy(),
        "attributes": attributes.astype(np.int64),
        "attribute_scores": attribute_scores.astype(np.float32),
    }


def check_images(images) -> None:
    for i, image in enumerate(images):
        if getattr(image, "mode", None) != "RGB":
            raise ValueError(f"image {i}: expected a PIL image in mode RGB, got {getattr(image, 'mode', type(image))}")


class Extractor(Protocol):
    """What every backend provides."""

    rule: BoxRule

    def extract(self, images: list) -> list[dict[str, np.ndarray]]: ...

    def provenance(self) -> dict[str, Any]: ...


def build_extractor(backend: str = "torchvision", **kwargs) -> Extractor:
    """Build the named backend's extractor; keyword arguments go to its constructor.

    Common ones: weights (a path, a weights enum entry in the torch cache, or `random[:SEED]`), device
    (`cpu`, `cuda`, `auto`), max_boxes, min_boxes, conf_threshold, seed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown BUTD backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**kwargs)
