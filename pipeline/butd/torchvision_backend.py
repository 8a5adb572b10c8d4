"""BUTD-style object features from torchvision's COCO Faster R-CNN (installs from PyPI; the default backend).

Per image, one pass of the detector's ResNet-50 body gives C2..C5; the FPN, the RPN (top 300 proposals after
NMS 0.7, as bottom-up attention uses) and the detector's box head score every proposal over the 90 COCO
classes. The shared box rule (pipeline.butd.select_boxes) keeps 36 proposals (or 10-100), and only those
go through the feature head: RoIAlign 14x14 on the body's C4 map (stride 16, 1024 channels), then the body's
own res5 block, mean-pooled to 2048-d. By default res5 keeps the stride 2 the detector was trained with
(the standard ResNet C4 head: 7x7x2048 out); `res5_dilation=True` makes it stride 1 / dilation 2 as in
bottom-up attention (14x14x2048 out, 4x the res5 cost). Capping the candidates before res5, with bf16, makes
this about 5x cheaper than float32 res5 over all 300 proposals (benchmarks/bench_butd.py).

Attributes: COCO detectors have no attribute head, so attributes are -1 with NaN scores (there is no real
source of Visual Genome attributes in this backend; the detectron2 backend has one).

On CPU the ResNet body, the FPN, the RPN head's convolutions and res5 run in bfloat16 with channels-last
memory (autocast); anchors, box decoding, NMS, RoIAlign and the box head's class scores stay float32, so box
coordinates keep full precision. On CUDA the same split with float16. benchmarks/bench_butd.py measures the
speed against float32 and the agreement of the features.
"""
from __future__ import annotations

import copy
from typing import Any

from pipeline import weights as weights_lib
from pipeline.butd import BoxRule, check_images, image_output, select_boxes

DETECTORS = {  # detector name -> its weights enum class name in torchvision.models.detection
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
}
ROI_SIZE = 14           # RoIAlign output, as bottom-up attention's ROIPool 14x14
C4_STRIDE = 16
NUM_PROPOSALS = 300     # RPN post-NMS top-N at test time (bottom-up attention)
PRE_NMS_PROPOSALS = 1000  # per FPN level: 5000 over five levels, against bottom-up attention's 6000 on one


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


def autocast_float32_out(module, device_type: str, dtype):
    """Wrap a module to run under autocast and hand back float32 tensors (or lists of them).

    Used for the RPN head: its 3x3 conv over every FPN level costs 0.37 CPU-s in float32 and 0.05 in bf16,
    while anchors, box decoding and NMS stay float32 (bf16 box coordinates would be off by pixels).
    """
    import torch

    class AutocastFloat32Out(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            with torch.autocast(device_type, dtype=dtype):
                out = self.inner(*args)
            return [[t.float() for t in group] for group in out]

    return AutocastFloat32Out()


class TorchvisionExtractor:
    def __init__(self, weights: str = "COCO_V1", device: str = "auto", max_boxes: int = 36,
                 min_boxes: int = 36, conf_threshold: float = 0.2, seed: int = 0,
                 detector: str = "fasterrcnn_resnet50_fpn", min_size: int = 600, max_size: int = 1000,
                 precision: str = "auto", res5_dilation: bool = False):
        import torch
        import torchvision.models.detection as detection

        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTORS)}")
        self.rule = BoxRule(min_boxes=min_boxes, max_boxes=max_boxes, conf_threshold=conf_threshold)
        self.device = weights_lib.pick_device(device)
        # Reduced precision where it is fast and accurate: bf16 on CPU (AMX/AVX-512), fp16 on CUDA.
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "bf16"
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.detector_name, self.min_size, self.max_size = detector, min_size, max_size

        enum_class = getattr(detection, DETECTORS[detector])
        spec = f"random:{seed}" if weights == "random" else weights
        model, self.weights_info = weights_lib.load_torchvision_model(
            getattr(detection, detector), enum_class, spec, f"BUTD torchvision backend ({detector})",
            weights_backbone=None, num_classes=len(enum_class.DEFAULT.meta["categories"]),
            min_size=min_size, max_size=max_size,
            rpn_pre_nms_top_n_test=PRE_NMS_PROPOSALS, rpn_post_nms_top_n_test=NUM_PROPOSALS)
        self.categories = list(enum_class.DEFAULT.meta["categories"])
        self.model = model.eval().to(self.device)
        self.res5_dilation = res5_dilation
        layer4 = self.model.backbone.body.layer4
        self.res5 = (dilated_res5(layer4) if res5_dilation else layer4).eval()
        if self.precision != "fp32":
            self.model.backbone.to(memory_format=torch.channels_last)
            self.res5.to(memory_format=torch.channels_last)
            self.model.rpn.head = autocast_float32_out(self.model.rpn.head, self.device.type, self.autocast_dtype)

    @property
    def autocast_dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def _autocast(self):
        import torch

        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def extract(self, images: list) -> list[dict]:
        """One output dict per image (see pipeline.butd). Images go through one at a time: batching pads
        them to a common size, which would make an image's features depend on its batch neighbours."""
        import torch

        check_images(images)
        with torch.inference_mode():
            return [self._extract_one(image, i) for i, image in enumerate(images)]

    def _extract_one(self, image, index: int) -> dict:
        import torch
        from torchvision.ops import roi_align
        from torchvision.transforms.functional import pil_to_tensor

        model = self.model
        pixels = pil_to_tensor(image).to(self.device).float().div_(255)
        batch, _ = model.transform([pixels])        # resized (short 600, long <= 1000), normalised, padded to /32
        tensors = batch.tensors
        if self.precision != "fp32":
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            body = model.backbone.body(tensors)     # C2..C5 as "0".."3"; C4 = "2": (1, 1024, H/16, W/16)
            pyramid = model.backbone.fpn(body)
        pyramid = {name: level.float() for name, level in pyramid.items()}
        proposals, _ = model.rpn(batch, pyramid)    # [(P <= 300, 4)] in resized-image pixels
        roi_features = model.roi_heads.box_roi_pool(pyramid, proposals, batch.image_sizes)
        class_logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(roi_features))
        class_probs = class_logits.softmax(dim=1)   # (P, 91), column 0 = background

        keep, _ = select_boxes(proposals[0], class_probs[:, 1:], self.rule)
        kept = proposals[0][keep]                   # (K, 4)
        crops = roi_align(body["2"].float(), [kept], output_size=ROI_SIZE, spatial_scale=1.0 / C4_STRIDE,
                          sampling_ratio=2, aligned=True)                     # (K, 1024, 14, 14)
        if self.precision != "fp32":
            crops = crops.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            features = self.res5(crops).float().mean(dim=(2, 3))  # (K, 2048, 7, 7) or dilated 14x14 -> (K, 2048)

        # Proposals (not regressed boxes) back to original-image pixels, as bottom-up attention does.
        height, width = batch.image_sizes[0]
        boxes = kept * torch.tensor([image.width / width, image.height / height] * 2, device=self.device)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
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
            "proposals": {"rpn_pre_nms_top_n_per_level": PRE_NMS_PROPOSALS, "rpn_post_nms_top_n": NUM_PROPOSALS,
                          "boxes": "proposals (not regressed)"},
            "feature": f"RoIAlign {ROI_SIZE}x{ROI_SIZE} on C4 (stride {C4_STRIDE}) of the detector's ResNet-50 "
                       f"body, its res5 block ({'stride 1, dilation 2' if self.res5_dilation else 'stride 2'}), "
                       f"mean-pooled to 2048",
            "input_min_size": self.min_size,
            "input_max_size": self.max_size,
            "precision": self.precision,
            "device": self.device.type,
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
            "object_vocab": self.categories[1:],
            "attribute_vocab": [],
            "attributes": "none: COCO detectors have no attribute head (ids -1, scores NaN)",
        }
