"""Bottom-up-attention features from the Visual Genome Faster R-CNN R101-C4, on detectron2's current API.

The model of bottom-up attention (Anderson et al. 2018), as its detectron2 ports rebuild it: a stock
detectron2 GeneralizedRCNN R101-C4 with four changes, registered here in detectron2's registries:
  * stem max-pool kernel 3, stride 2, padding 0, ceil_mode (Caffe)          -> `build_butd_resnet_backbone`
  * res5 in the ROI head with stride 1 and dilation 2 (14x14 RoIs stay 14x14) -> `ButdRes5ROIHeads`
  * RoIPool 14x14 on res4, RPN hidden conv of 512 channels, anchors 64-512 on res4 (config)
  * an attribute head: embedding of the predicted class (1601 -> 256) + the 2048-d feature
    -> Linear(2304, 512) -> ReLU -> Linear(512, 401)                         -> `AttributeHead`
Per image: RPN top 300 proposals (NMS 0.7), res5 and the box predictor over all of them (its class
scores are what the box rule needs), the shared box rule (pipeline.butd.select_boxes), and the kept
proposals' mean-pooled res5 features, object and attribute labels. Boxes are the proposals (not the
regressed boxes) in original-image pixels, as bottom-up attention's `generate_tsv` does.

Class order follows detectron2 (background is the LAST of the 1601 class columns); attribute column 0 is
"no attribute". Weights: a converted checkpoint (.pkl/.pth) from a local path, checked against the sha256
the configuration gives before it is read (`weights_sha256`; required for a .pkl, which detectron2 unpickles)
and after loading (`load_checked`): a parameter or buffer of the model that the file does not fill (missing,
or of another shape) is an error naming it, instead of a model running half random. `weights=random` builds seeded random
weights and re-estimates every frozen batch-norm's statistics on a calibration image, because with the
identity statistics of a fresh model the activations of the 101 layers overflow and the RPN keeps no proposals.

detectron2 and torch are imported inside functions only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import weights as weights_lib
from pipeline.butd import BoxRule, check_images, image_output, select_boxes, to_original_pixels

NUM_OBJECTS = 1600
NUM_ATTRIBUTES = 400
PIXEL_MEAN_BGR = [102.9801, 115.9465, 122.7717]
COMPONENT = "BUTD detectron2 backend (Visual Genome R101-C4)"
HOW_TO_OBTAIN = ("Use the Visual Genome R101-C4 checkpoint of a detectron2 port of bottom-up attention (e.g. "
                 "faster_rcnn_from_caffe_attr.pkl of airsplay/py-bottom-up-attention, or "
                 "bua-caffe-frcn-r101-k36.pth of MILVLG/bottom-up-attention.pytorch) and set its path as "
                 "the BUTD weights in luigi.cfg.")


def butd_config(min_size: int = 600, max_size: int = 1000, device: str = "cpu", num_proposals: int = 300):
    """detectron2 config of bottom-up attention's R101-C4 (set field by field: no model-zoo file needed)."""
    from detectron2.config import get_cfg

    register()
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = PIXEL_MEAN_BGR, [1.0, 1.0, 1.0]
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, max_size
    cfg.MODEL.BACKBONE.NAME = "build_butd_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True                      # Caffe ResNet
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[64, 128, 256, 512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.RPN.CONV_DIMS = [512]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = num_proposals
    cfg.MODEL.RPN.NMS_THRESH = 0.7
    cfg.MODEL.ROI_HEADS.NAME = "ButdRes5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_OBJECTS
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
    return cfg


_REGISTERED = False


def register() -> None:
    """Register the backbone and ROI head with detectron2 (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import torch
    import torch.nn.functional as F
    from detectron2.config import configurable
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, ResNet
    from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, build_resnet_backbone
    from detectron2.modeling.roi_heads import Res5ROIHeads

    class CaffeMaxPoolStem(BasicStem):
        """detectron2's stem with Caffe's max-pool (no padding, ceil mode); same parameters."""

        def forward(self, x):
            x = F.relu_(self.conv1(x))
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)

    @BACKBONE_REGISTRY.register()
    def build_butd_resnet_backbone(cfg, input_shape: ShapeSpec):
        backbone = build_resnet_backbone(cfg, input_shape)
        backbone.stem = CaffeMaxPoolStem(input_shape.channels, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
                                         cfg.MODEL.RESNETS.NORM)
        if cfg.MODEL.BACKBONE.FREEZE_AT >= 1:
            backbone.stem.freeze()
        return backbone

    class AttributeHead(torch.nn.Module):
        """(K, 2048) features + (K,) predicted class ids (1..1600 + 0 = background row of the embedding)
        -> (K, 401) attribute logits, column 0 = "no attribute"."""

        def __init__(self, feature_dim: int = 2048, num_classes: int = NUM_OBJECTS + 1,
                     num_attributes: int = NUM_ATTRIBUTES + 1):
            super().__init__()
            self.cls_embed = torch.nn.Embedding(num_classes, 256)
            self.attr_linear1 = torch.nn.Linear(feature_dim + 256, 512)
            self.attr_linear2 = torch.nn.Linear(512, num_attributes)

        def forward(self, features, classes):
            hidden = torch.cat([features, self.cls_embed(classes)], dim=1)
            return self.attr_linear2(F.relu(self.attr_linear1(hidden)))

    @ROI_HEADS_REGISTRY.register()
    class ButdRes5ROIHeads(Res5ROIHeads):
        """Res5ROIHeads with bottom-up attention's res5 (stride 1, dilation 2) and an attribute head."""

        @configurable
        def __init__(self, *, attribute_head, **kwargs):
            super().__init__(**kwargs)
            self.attribute_head = attribute_head

        @classmethod
        def from_config(cls, cfg, input_shape):
            ret = super().from_config(cfg, input_shape)
            ret["attribute_head"] = AttributeHead()
            return ret

        @classmethod
        def _build_res5_block(cls, cfg):
            resnets = cfg.MODEL.RESNETS
            out_channels = resnets.RES2_OUT_CHANNELS * 8
            blocks = ResNet.make_stage(
                BottleneckBlock, 3, stride_per_block=[1, 1, 1], in_channels=out_channels // 2,
                bottleneck_channels=resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * 8, out_channels=out_channels,
                num_groups=resnets.NUM_GROUPS, norm=resnets.NORM, stride_in_1x1=resnets.STRIDE_IN_1X1,
                dilation=2)
            return torch.nn.Sequential(*blocks), out_channels

    _REGISTERED = True


class IncompatibleWeightsError(ValueError):
    """A checkpoint does not fill every parameter and buffer of the model it is loaded into."""


def load_checked(model, path: Path) -> list[str]:
    """Load a checkpoint with detectron2's DetectionCheckpointer and check what it filled.

    Raises IncompatibleWeightsError listing the model's parameters and buffers left unloaded: keys the file
    lacks (a head or backbone layer named differently, e.g.) and keys whose shape differs (the checkpointer
    skips those). Known harmless, as detectron2 itself treats them: pixel_mean/pixel_std (set from the
    config) and the anchor generator's cell_anchors (computed, not stored). Keys in the file that the model
    does not use are returned (they leave nothing unloaded; the caller records them).
    """
    from detectron2.checkpoint import DetectionCheckpointer

    class Checkpointer(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)  # already without the harmless keys
            return self.incompatible

    checkpointer = Checkpointer(model)
    checkpointer.load(str(path))
    incorrect_shapes = checkpointer.incompatible.incorrect_shapes     # not loaded, so also in missing_keys
    missing = sorted(set(checkpointer.incompatible.missing_keys) - {key for key, _, _ in incorrect_shapes})
    wrong_shapes = [f"{key} (file {tuple(file_shape)}, model {tuple(model_shape)})"
                    for key, file_shape, model_shape in incorrect_shapes]
    if missing or wrong_shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: " + ", ".join(missing))
        if wrong_shapes:
            problems.append(f"{len(wrong_shapes)} of another shape: " + ", ".join(wrong_shapes))
        raise IncompatibleWeightsError(
            f"{path}: the checkpoint does not fill the BUTD R101-C4 model ({'; '.join(problems)}). Those "
            f"weights would stay random. Is it a Visual Genome R101-C4 checkpoint of bottom-up attention "
            f"with 1600 classes and 400 attributes? {HOW_TO_OBTAIN}")
    return sorted(checkpointer.incompatible.unexpected_keys)


def calibrate_frozen_bn(model, pixels) -> None:
    """Set every FrozenBatchNorm2d's statistics to those of its input on one calibration pass, in order.

    For random weights only: a fresh model's identity statistics let activations grow through 101 layers
    until they overflow. Each residual branch's last norm also gets scale 0.2, so the residual stream stays
    near unit scale over 33 blocks and the RPN's deltas (initialised for unit-scale inputs) stay small
    enough for proposals to spread over the image. pixels: (3, H, W) BGR float tensor.
    """
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling.backbone.resnet import BottleneckBlock
    from detectron2.structures import Boxes

    for block in model.modules():
        if isinstance(block, BottleneckBlock):
            block.conv3.norm.weight.fill_(0.2)

    def set_stats(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + module.eps)

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            images = model.preprocess_image([{"image": pixels}])
            features = model.backbone(images.tensor)
            h, w = images.image_sizes[0]
            grid = torch.tensor([[x, y, x + w / 2, y + h / 2] for x in (0, w / 4, w / 2) for y in (0, h / 4, h / 2)])
            model.roi_heads._shared_roi_transform([features["res4"]], [Boxes(grid.to(pixels.device))])
    finally:
        for hook in hooks:
            hook.remove()


def read_vocab(path: Path | None, size: int, kind: str) -> list[str]:
    """Vocabulary file of `size` lines (a line may hold comma-separated synonyms: the first is the name)."""
    if path is None:
        return [f"{kind}_{i}" for i in range(size)]
    names = [line.split(",")[0].strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != size:
        raise ValueError(f"{path}: {len(names)} {kind} names, expected {size}")
    return names


class Detectron2Extractor:
    def __init__(self, weights: str, device: str = "auto", max_boxes: int = 36, min_boxes: int = 36,
                 conf_threshold: float = 0.2, seed: int = 0, min_size: int = 600, max_size: int = 1000,
                 object_vocab: str | None = None, attribute_vocab: str | None = None, num_proposals: int = 300,
                 weights_sha256: str = "", weights_place: str = ""):
        """`weights_place`: where the file `weights` names lies instead (the tagger's `locate butd=PATH`); the
        provenance names `weights` all the same."""
        seed = weights_lib.random_seed(f"random:{seed}" if weights == "random" else weights)
        if seed is None:
            # detectron2 unpickles a .pkl: the file must be the configured one before anything reads it
            path = weights_lib.require_file(weights_place or weights, COMPONENT, HOW_TO_OBTAIN)
            sha256 = weights_lib.sha256_file(path)
            if path.suffix == ".pkl" and not weights_sha256:
                raise weights_lib.WeightsNotTrustedError(
                    f"{COMPONENT}: {path} is a pickle file, and unpickling runs whatever code it holds: give its "
                    f"sha256 as butd_weights_sha256 once you know it is the file you meant (this file's is {sha256})")
            weights_lib.check_sha256(sha256, weights_sha256, f"{COMPONENT}: {path}")

        import torch
        from detectron2.modeling import build_model

        self.rule = BoxRule(min_boxes=min_boxes, max_boxes=max_boxes, conf_threshold=conf_threshold)
        self.device = weights_lib.pick_device(device)
        self.min_size, self.max_size = min_size, max_size
        self.num_proposals = num_proposals     # bottom-up attention: 300; res5 runs on every one of them
        self.cfg = butd_config(min_size, max_size, self.device.type, num_proposals)
        self.unused_weight_keys: list[str] = []   # in the weights file, not in the model
        if seed is None:
            self.model = build_model(self.cfg)
            self.unused_weight_keys = load_checked(self.model, path)
            self.weights_info = weights_lib.WeightsInfo(str(Path(weights).expanduser().resolve()), sha256, False)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.model = build_model(self.cfg)
                calibration = torch.rand(3, min_size, min_size, generator=torch.Generator().manual_seed(seed)) * 255
            calibrate_frozen_bn(self.model, calibration.to(self.device))
            self.weights_info = weights_lib.WeightsInfo(f"random(seed={seed})", "", True)
        self.model.eval()
        self.object_vocab = read_vocab(object_vocab, NUM_OBJECTS, "object")
        self.attribute_vocab = read_vocab(attribute_vocab, NUM_ATTRIBUTES, "attribute")
        self.vocab_files = {"objects": object_vocab, "attributes": attribute_vocab}

    def extract(self, images: list) -> list[dict]:
        import torch

        check_images(images)
        with torch.inference_mode():
            return [self._extract_one(image, i) for i, image in enumerate(images)]

    def _extract_one(self, image, index: int) -> dict:
        import numpy as np
        import torch
        from detectron2.data import transforms as T

        model = self.model
        rgb = np.asarray(image)
        resize = T.ResizeShortestEdge([self.min_size, self.min_size], self.max_size)
        bgr = resize.get_transform(rgb).apply_image(rgb[:, :, ::-1].copy())
        pixels = torch.as_tensor(bgr.astype("float32").transpose(2, 0, 1), device=self.device)
        images = model.preprocess_image([{"image": pixels}])
        features = model.backbone(images.tensor)                       # {"res4": (1, 1024, H/16, W/16)}
        proposals, _ = model.proposal_generator(images, features)       # [Instances] with <= 300 proposal_boxes
        heads = model.roi_heads
        proposal_boxes = [p.proposal_boxes for p in proposals]
        res5 = heads._shared_roi_transform([features[f] for f in heads.in_features], proposal_boxes)
        pooled = res5.mean(dim=(2, 3))                                  # (P, 2048)
        predictions = heads.box_predictor(pooled)
        probs = heads.box_predictor.predict_probs(predictions, proposals)[0]   # (P, 1601), background last

        boxes = proposal_boxes[0].tensor                                # (P, 4) in resized-image pixels
        keep, _ = select_boxes(boxes, probs[:, :-1], self.rule)
        objects = probs[keep, :-1].argmax(dim=1)                        # 0..1599
        # The embedding has background in row 0 (Caffe order), so foreground class c is row c + 1.
        attribute_probs = heads.attribute_head(pooled[keep], objects + 1).softmax(dim=1)   # (K, 401)
        scaled = to_original_pixels(boxes[keep], images.image_sizes[0], image)
        return image_output(pooled[keep], scaled, probs[keep, :-1], attribute_probs[:, 1:], index)

    def provenance(self) -> dict[str, Any]:
        import detectron2
        import torch

        info = self.weights_info
        return {
            "backend": "detectron2",
            "model": "Visual Genome Faster R-CNN R101-C4 of bottom-up attention (1600 objects, 400 attributes)",
            "weights": info.name,
            "weights_sha256": info.sha256,
            "random_weights": info.random,
            "weights_unused_keys": self.unused_weight_keys,
            "box_rule": self.rule.describe(),
            "proposals": {"rpn_pre_nms_top_n": 6000, "rpn_post_nms_top_n": self.num_proposals, "rpn_nms": 0.7,
                          "boxes": "proposals (not regressed)"},
            "feature": "ROIPool 14x14 on res4, res5 stride 1 dilation 2, mean-pooled to 2048",
            "input_min_size": self.min_size,
            "input_max_size": self.max_size,
            "device": self.device.type,
            "versions": {"torch": torch.__version__, "detectron2": detectron2.__version__},
            "vocab_files": self.vocab_files,
            "object_vocab": self.object_vocab,
            "attribute_vocab": self.attribute_vocab,
        }
