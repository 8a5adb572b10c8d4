"""BUTD-style object features from torchvision's COCO Faster R-CNN (installs from PyPI; the default backend).

Per image, one pass of the detector's ResNet-50 body gives C2..C5; the FPN, the RPN (top `num_proposals` after
NMS 0.7; 300 as bottom-up attention uses) and the detector's box head score every proposal over the 90 COCO
classes. The shared box rule (pipeline.butd.select_boxes) keeps 36 proposals (or 10-100), and only those
go through the feature head: RoIAlign 14x14 on the body's C4 map (stride 16, 1024 channels), then the body's
own res5 block, mean-pooled to 2048-d. By default res5 keeps the stride 2 the detector was trained with
(the standard ResNet C4 head: 7x7x2048 out); `res5_dilation=True` makes it stride 1 / dilation 2 as in
bottom-up attention (14x14x2048 out, 4x the res5 cost).

Where the CPU time goes and what cuts it (benchmarks/bench_butd.py prints the split and docs/butd.md the
figures): the convolutions dominate, so the body, the FPN, the RPN head's convolutions and res5 run in the
precision pipeline/precision.py picks (`auto`: bfloat16 on a CPU with native bf16, fp16 on CUDA, float32
elsewhere) with channels-last memory, with every batch norm folded into the convolution before it (no
per-call weight casts, no float32 round trip of each activation map through the norm). RoIAlign runs
as a weighted gather of channels-last feature rows (`roi_align_gather`, the same numbers as
torchvision.ops.roi_align, faster on CPU), both for the proposals' box pool and for the C4 crops.
Anchors, box decoding, NMS, RoIAlign's sampling and the box head's class scores stay float32, so proposal
coordinates and the box rule's scores keep full precision.

Attributes: COCO detectors have no attribute head, so attributes are -1 with NaN scores (there is no real
source of Visual Genome attributes in this backend; the detectron2 backend has one).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Any

from pipeline import weights as weights_lib
from pipeline.butd import BoxRule, check_images, image_output, select_boxes, to_original_pixels

DETECTORS = {  # detector name -> its weights enum class name in torchvision.models.detection
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
}
ROI_SIZE = 14           # RoIAlign output, as bottom-up attention's ROIPool 14x14
ROI_SAMPLING = 2        # RoIAlign samples per bin along each axis
C4_STRIDE = 16
NUM_PROPOSALS = 300     # RPN post-NMS top-N at test time (bottom-up attention)
PRE_NMS_PROPOSALS = 1000  # per FPN level: 5000 over five levels, against bottom-up attention's 6000 on one
STAGES = ("transform", "body", "fpn", "rpn", "box head", "box rule", "res5")  # keys of stage_seconds
# (convolution, its norm) child names in torchvision's ResNet stem, Bottleneck and downsample Sequential
CONV_NORM_PAIRS = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "0": "1"}


def fold_batch_norms(module) -> None:
    """Fold every eval-mode batch norm (BatchNorm2d or FrozenBatchNorm2d) of a torchvision ResNet into the
    convolution before it, in place; the norm becomes an Identity.

    conv(x) * s + (beta - mean * s), s = gamma / sqrt(var + eps), is one convolution with weight W * s and
    bias (b - mean) * s + beta: the same function in float32 (up to rounding), one op instead of two.
    """
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for conv_name, norm_name in CONV_NORM_PAIRS.items():
            conv, norm = children.get(conv_name), children.get(norm_name)
            if not (isinstance(conv, torch.nn.Conv2d)
                    and isinstance(norm, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))):
                continue
            with torch.no_grad():
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()         # (out,)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                fused = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                        conv.padding, conv.dilation, conv.groups, bias=True,
                                        padding_mode=conv.padding_mode).to(conv.weight.device)
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
            setattr(parent, conv_name, fused)
            setattr(parent, norm_name, torch.nn.Identity())


def _axis_taps(start, end, size: int, output_size: int, sampling_ratio: int):
    """RoIAlign's sampling along one axis: for each of R boxes and each output bin, the 2 * sampling_ratio
    feature indices it reads and their weights (bilinear, averaged over the bin's samples).

    start, end: (R,) box extent in feature-map pixels. Returns indices (R, out, 2s) int64, weights
    (R, out, 2s) float. Same rules as torchvision's kernel: samples below -1 or above `size` read nothing,
    the others are clamped to [0, size - 1].
    """
    import torch

    samples = output_size * sampling_ratio
    steps = (torch.arange(samples, dtype=start.dtype, device=start.device) + 0.5) / samples   # bin-sample centres
    position = start[:, None] + (end - start)[:, None] * steps               # (R, out * s) sample coordinates
    valid = ((position >= -1) & (position <= size)).to(position.dtype)
    position = position.clamp(0, size - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = (position - low) * valid
    indices = torch.stack([low, high], dim=-1).view(-1, output_size, 2 * sampling_ratio)
    weights = torch.stack([valid - frac, frac], dim=-1).view(-1, output_size, 2 * sampling_ratio)
    return indices, weights / sampling_ratio


def roi_align_gather(feature, boxes, output_size: int, spatial_scale: float, sampling_ratio: int,
                     aligned: bool):
    """torchvision.ops.roi_align for one image (sampling_ratio > 0), as a weighted gather of feature rows.

    feature (1, C, H, W), best channels-last; boxes (R, 4) x1 y1 x2 y2 in image pixels -> (R, C, out, out)
    in feature's dtype. Each output cell is a weighted sum of (2s)^2 feature vectors (s^2 samples, 4 bilinear
    corners each), so the whole op is one `embedding_bag` over the (H*W, C) table of channel vectors:
    contiguous C-wide reads instead of torchvision's per-channel scalar loop.
    """
    import torch
    import torch.nn.functional as F

    _, channels, height, width = feature.shape
    scaled = boxes.float() * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = scaled.unbind(dim=1)
    if not aligned:                                   # torchvision: legacy RoIs are at least 1 pixel wide
        x2, y2 = torch.maximum(x2, x1 + 1), torch.maximum(y2, y1 + 1)
    rows, row_weights = _axis_taps(y1, y2, height, output_size, sampling_ratio)      # (R, out, 2s)
    cols, col_weights = _axis_taps(x1, x2, width, output_size, sampling_ratio)
    taps = (2 * sampling_ratio) ** 2
    indices = rows[:, :, None, :, None] * width + cols[:, None, :, None, :]          # (R, out, out, 2s, 2s)
    weights = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]
    table = feature[0].permute(1, 2, 0).reshape(height * width, channels)          # a view if channels-last
    pooled = F.embedding_bag(indices.reshape(-1, taps), table, mode="sum",
                             per_sample_weights=weights.reshape(-1, taps).to(table.dtype))  # (R*out*out, C)
    return pooled.view(len(boxes), output_size, output_size, channels).permute(0, 3, 1, 2)


def pool_proposals(pool, pyramid: dict, proposals, image_sizes):
    """The detector's MultiScaleRoIAlign (box_roi_pool) with `roi_align_gather` per FPN level.

    pyramid: FPN levels {name: (1, 256, h, w)}; proposals [(P, 4)] -> (P, 256, 7, 7), the RoIs of each
    level pooled from it by torchvision's own level mapping (FPN paper heuristic).
    """
    import torch
    from torchvision.ops.poolers import _filter_input, _setup_scales

    levels = _filter_input(pyramid, pool.featmap_names)
    if pool.scales is None or pool.map_levels is None:
        pool.scales, pool.map_levels = _setup_scales(levels, image_sizes, pool.canonical_scale,
                                                     pool.canonical_level)
    boxes = proposals[0]
    level_of_box = pool.map_levels(proposals)                                        # (P,) level index
    size = pool.output_size[0]
    pooled = boxes.new_zeros((len(boxes), levels[0].shape[1], size, size))
    for level, (feature, scale) in enumerate(zip(levels, pool.scales)):
        index = torch.nonzero(level_of_box == level).flatten()
        if len(index):
            pooled[index] = roi_align_gather(feature, boxes[index], size, scale, pool.sampling_ratio,
                                             aligned=False).to(pooled.dtype)
    return pooled


def dilated_res5(layer4):
    """A copy of a torchvision ResNet layer4 with stride 1 and every 3x3 conv dilated by 2 (padding 2).

    Same weights; a 14x14 RoI stays 14x14, as in bottom-up attention's res5 head (4x the cost of stride 2).
    (K, 1024, 14, 14) -> (K, 2048, 14, 14)
    """
    res5 = copy.deepcopy(layer4)
    for block in res5:
        block.conv2.stride, block.conv2.dilation, block.conv2.padding = (1, 1), (2, 2), (2, 2)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
    return res5


def float32_out(module, dtype):
    """Wrap a module converted to `dtype` so it takes float32 inputs and hands back float32 lists of lists.

    Used for the RPN head: its 3x3 conv over every FPN level costs about as much as the FPN itself in float32,
    while anchors, box decoding and NMS stay float32 (bf16 box coordinates would be off by pixels).
    """
    import torch

    class Float32Out(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module.to(dtype)

        def forward(self, levels):
            out = self.inner([level.to(dtype) for level in levels])
            return [[t.float() for t in group] for group in out]

    return Float32Out()


class TorchvisionExtractor:
    def __init__(self, weights: str = "COCO_V1", device: str = "auto", max_boxes: int = 36,
                 min_boxes: int = 36, conf_threshold: float = 0.2, seed: int = 0,
                 detector: str = "fasterrcnn_resnet50_fpn", min_size: int = 600, max_size: int = 1000,
                 precision: str = "auto", res5_dilation: bool = False, weights_sha256: str = "",
                 num_proposals: int = NUM_PROPOSALS, weights_place: str = ""):
        """`weights_place`: where the file `weights` names lies instead (the tagger's `locate butd=PATH`); the
        provenance names `weights` all the same."""
        import torch
        import torchvision.models.detection as detection

        from pipeline.precision import resolve_precision

        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTORS)}")
        self.rule = BoxRule(min_boxes=min_boxes, max_boxes=max_boxes, conf_threshold=conf_threshold)
        self.device = weights_lib.pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = self.precision.dtype
        self.detector_name, self.min_size, self.max_size = detector, min_size, max_size
        self.num_proposals = num_proposals

        enum_class = getattr(detection, DETECTORS[detector])
        spec = f"random:{seed}" if weights == "random" else weights
        model, self.weights_info = weights_lib.load_torchvision_model(
            getattr(detection, detector), enum_class, spec, f"BUTD torchvision backend ({detector})",
            place=weights_place or None, weights_backbone=None, num_classes=len(enum_class.DEFAULT.meta["categories"]),
            min_size=min_size, max_size=max_size,
            rpn_pre_nms_top_n_test=PRE_NMS_PROPOSALS, rpn_post_nms_top_n_test=num_proposals)
        if not self.weights_info.random:
            weights_lib.check_sha256(self.weights_info.sha256, weights_sha256, self.weights_info.name)
        self.categories = list(enum_class.DEFAULT.meta["categories"])
        self.model = model.eval().to(self.device)
        fold_batch_norms(self.model.backbone.body)
        self.res5_dilation = res5_dilation
        layer4 = self.model.backbone.body.layer4
        self.res5 = (dilated_res5(layer4) if res5_dilation else layer4).eval()
        for module in (self.model.backbone, self.res5):
            module.to(dtype=self.dtype, memory_format=torch.channels_last)
        self.model.rpn.head = float32_out(self.model.rpn.head, self.dtype)
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)   # CPU seconds per stage, summed over extract calls

    @contextmanager
    def _stage(self, name: str):
        start = time.process_time()
        try:
            yield
        finally:
            self.stage_seconds[name] += time.process_time() - start

    def extract(self, images: list) -> list[dict]:
        """One output dict per image (see pipeline.butd). Images go through one at a time: batching pads
        them to a common size, which would make an image's features depend on its batch neighbours."""
        import torch

        check_images(images)
        with torch.inference_mode():
            return [self._extract_one(image, i) for i, image in enumerate(images)]

    def _extract_one(self, image, index: int) -> dict:
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        model = self.model
        with self._stage("transform"):
            pixels = pil_to_tensor(image).to(self.device).float().div_(255)
            batch, _ = model.transform([pixels])    # resized (short 600, long <= 1000), normalised, padded to /32
            tensors = batch.tensors.to(dtype=self.dtype, memory_format=torch.channels_last)
        with self._stage("body"):
            body = model.backbone.body(tensors)     # C2..C5 as "0".."3"; C4 = "2": (1, 1024, H/16, W/16)
        with self._stage("fpn"):
            pyramid = {name: level.float() for name, level in model.backbone.fpn(body).items()}
        with self._stage("rpn"):
            proposals, _ = model.rpn(batch, pyramid)  # [(P <= 300, 4)] in resized-image pixels, float32
        with self._stage("box head"):
            roi_features = pool_proposals(model.roi_heads.box_roi_pool, pyramid, proposals, batch.image_sizes)
            class_logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(roi_features))
            class_probs = class_logits.softmax(dim=1)  # (P, 91), column 0 = background
        with self._stage("box rule"):
            keep, _ = select_boxes(proposals[0], class_probs[:, 1:], self.rule)
        with self._stage("res5"):
            kept = proposals[0][keep]               # (K, 4)
            crops = roi_align_gather(body["2"].float(), kept, ROI_SIZE, 1.0 / C4_STRIDE, ROI_SAMPLING,
                                     aligned=True)  # (K, 1024, 14, 14)
            crops = crops.to(dtype=self.dtype, memory_format=torch.channels_last)
            features = self.res5(crops).float().mean(dim=(2, 3))  # (K, 2048, 7, 7) or dilated 14x14 -> (K, 2048)

        # proposals (not regressed boxes), as bottom-up attention stores them
        boxes = to_original_pixels(kept, batch.image_sizes[0], image)
        return image_output(features, boxes, class_probs[keep, 1:], None, index)

    def provenance(self) -> dict[str, Any]:
        import torch
        import torchvision

        info = self.weights_info
        return {
            "backend": "torchvision",
            "detector": self.detector_name,
            "weights": info.name,
            "weights_sha256": info.sha256,
            "random_weights": info.random,
            "weights_meta": info.meta,
            "box_rule": self.rule.describe(),
            "proposals": {"rpn_pre_nms_top_n_per_level": PRE_NMS_PROPOSALS, "rpn_post_nms_top_n": self.num_proposals,
                          "boxes": "proposals (not regressed)"},
            "feature": f"RoIAlign {ROI_SIZE}x{ROI_SIZE} (sampling {ROI_SAMPLING}) on C4 (stride {C4_STRIDE}) of "
                       f"the detector's ResNet-50 body, its res5 block "
                       f"({'stride 1, dilation 2' if self.res5_dilation else 'stride 2'}), mean-pooled to 2048",
            "input_min_size": self.min_size,
            "input_max_size": self.max_size,
            **self.precision.provenance(),
            "precision_detail": "body, FPN, RPN head convolutions and res5 in this precision with batch norms "
                                "folded into the convolutions; anchors, NMS, RoIAlign, box head float32",
            "device": self.device.type,
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
            "object_vocab": self.categories[1:],
            "attribute_vocab": [],
            "attributes": "none: COCO detectors have no attribute head (ids -1, scores NaN)",
        }
