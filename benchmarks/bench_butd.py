"""BUTD torchvision backend: CPU-seconds per image, ours against the stock float32 detector, single thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_butd.py [--images 4] [--repeats 1] [--detectron2]
        [--precision auto|fp32|bf16]

Ours: the default extractor (the precision `auto` picks -- bf16 only on a CPU with native bf16, see
pipeline/precision.py; printed with the ratios -- and channels-last with batch norms folded into the
convolutions, RoIAlign as a channels-last gather, the box rule applied before res5 so res5 sees 36 boxes).
Baseline: torchvision's stock Faster R-CNN with the same weights in float32 (its own RoIAlign and batch
norms), res5 run over all ~300 proposals and the boxes chosen afterwards (what extracting features for
every proposal, as a detector's box head does, costs).
Both run at 600/1000 on natural photos (scikit-image's samples, resized to 640x480) with seeded random
weights (no pretrained weights on this machine; the cost does not depend on the weight values). Times are
CPU seconds (time.process_time), which other processes on the machine inflate less than wall time; the load
average is printed with them.
Also printed: the CPU split per stage, the agreement of our features with the stock float32 model's on the
same boxes (cosine), and the cost of the box rule with bottom-up attention's 1600 classes; with --detectron2
also the detectron2 backend's cost (R101-C4, float32, res5 over all 300 proposals; needs detectron2).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.models.detection as detection  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from torchvision.ops import box_iou, roi_align  # noqa: E402
from torchvision.transforms.functional import pil_to_tensor  # noqa: E402

from pipeline import weights as weights_lib  # noqa: E402
from pipeline.butd import BoxRule, build_extractor, select_boxes  # noqa: E402
from pipeline.butd.torchvision_backend import (C4_STRIDE, NUM_PROPOSALS, PRE_NMS_PROPOSALS,  # noqa: E402
                                               ROI_SAMPLING, ROI_SIZE, STAGES)

SEED = 0


def photos(n: int) -> list:
    samples = [data.astronaut, data.coffee, data.chelsea, data.rocket, data.immunohistochemistry, data.cat]
    return [Image.fromarray(samples[i % len(samples)]()).resize((640, 480)) for i in range(n)]


def stock_detector():
    """torchvision's Faster R-CNN as it comes, float32, with the extractor's random:SEED weights."""
    model, _ = weights_lib.load_torchvision_model(
        detection.fasterrcnn_resnet50_fpn, detection.FasterRCNN_ResNet50_FPN_Weights, f"random:{SEED}",
        "baseline", weights_backbone=None, num_classes=91, min_size=600, max_size=1000,
        rpn_pre_nms_top_n_test=PRE_NMS_PROPOSALS, rpn_post_nms_top_n_test=NUM_PROPOSALS)
    return model.eval()


class Baseline:
    """Float32 stock detector, res5 over every proposal, boxes chosen afterwards; CPU seconds per stage."""

    def __init__(self, model, rule: BoxRule):
        self.model, self.rule = model, rule
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)

    def _timed(self, name, fn):
        start = time.process_time()
        out = fn()
        self.stage_seconds[name] += time.process_time() - start
        return out

    def extract(self, image):
        """The chosen proposals (K, 4) in resized-image pixels and their features (K, 2048)."""
        model, t = self.model, self._timed
        batch, _ = t("transform", lambda: model.transform([pil_to_tensor(image).float().div_(255)]))
        body = t("body", lambda: model.backbone.body(batch.tensors))
        pyramid = t("fpn", lambda: model.backbone.fpn(body))
        proposals, _ = t("rpn", lambda: model.rpn(batch, pyramid))
        class_logits, _ = t("box head", lambda: model.roi_heads.box_predictor(model.roi_heads.box_head(
            model.roi_heads.box_roi_pool(pyramid, proposals, batch.image_sizes))))
        features = t("res5", lambda: model.backbone.body.layer4(roi_align(
            body["2"], proposals, ROI_SIZE, 1.0 / C4_STRIDE, ROI_SAMPLING, aligned=True)).mean(dim=(2, 3)))
        keep, _ = t("box rule", lambda: select_boxes(proposals[0], class_logits.softmax(dim=1)[:, 1:], self.rule))
        return proposals[0][keep], features[keep]


def cpu_seconds_per_image(runs: dict, images, repeats: int):
    """CPU seconds of every variant on every image, the variants interleaved image by image so that they
    meet the same load. Returns {name: [seconds per pass]}, {name: last pass's outputs}."""
    seconds = {name: [] for name in runs}
    outputs = {name: [] for name in runs}
    for repeat in range(repeats):
        for image in images:
            for name, run in runs.items():
                start = time.process_time()
                out = run(image)
                seconds[name].append(time.process_time() - start)
                if repeat == repeats - 1:
                    outputs[name].append(out)
    return seconds, outputs


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--detectron2", action="store_true", help="also time the detectron2 backend")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = photos(args.images)
    load_before = os.getloadavg()

    ours = build_extractor(backend="torchvision", weights="random", seed=SEED, device="cpu", precision=args.precision)
    dilated = build_extractor(backend="torchvision", weights="random", seed=SEED, device="cpu", res5_dilation=True,
                              precision=args.precision)
    precision = ours.precision
    stock = stock_detector()
    baseline = Baseline(stock, ours.rule)
    with torch.inference_mode():
        for run in (lambda im: ours.extract([im]), lambda im: dilated.extract([im]), baseline.extract):
            run(images[0])                                                     # warm-up (allocations, kernels)
        ours.stage_seconds = dict.fromkeys(STAGES, 0.0)
        baseline.stage_seconds = dict.fromkeys(STAGES, 0.0)
        seconds, outputs = cpu_seconds_per_image(
            {"baseline": baseline.extract, "ours": lambda im: ours.extract([im])[0],
             "dilated": lambda im: dilated.extract([im])[0]}, images, args.repeats)
        t_base, t_ours, t_dilated = (float(np.mean(seconds[name])) for name in ("baseline", "ours", "dilated"))
        runs = args.repeats * len(images)
        base_stages = {name: total / runs for name, total in baseline.stage_seconds.items()}
        our_stages = {name: total / runs for name, total in ours.stage_seconds.items()}

        # Agreement: our features against the stock float32 model's on exactly our boxes (C4 crops with
        # torchvision's RoIAlign, float32 res5), so precision, folding and the gather RoIAlign all count.
        # Also: how many of our 36 boxes the baseline chose too (its proposals come from a float32 RPN).
        cosines, shared = [], []
        for image, out, (base_boxes, _) in zip(images, outputs["ours"], outputs["baseline"]):
            batch, _ = stock.transform([pil_to_tensor(image).float().div_(255)])
            height, width = batch.image_sizes[0]
            boxes = torch.from_numpy(out["boxes"]) * torch.tensor([width / image.width, height / image.height] * 2)
            c4 = stock.backbone.body(batch.tensors)["2"]
            crops = roi_align(c4, [boxes], ROI_SIZE, 1.0 / C4_STRIDE, ROI_SAMPLING, aligned=True)
            reference = stock.backbone.body.layer4(crops).mean(dim=(2, 3))
            cosines.append(cosine(out["features"], reference.numpy()))
            shared.append((box_iou(boxes, base_boxes).max(dim=1).values > 0.95).float().mean().item())
        cosines = np.concatenate(cosines)

        g = torch.Generator().manual_seed(0)
        scores = torch.rand(300, 1600, generator=g).softmax(dim=1)
        corners = torch.rand(300, 2, generator=g) * 500
        boxes = torch.cat([corners, corners + torch.rand(300, 2, generator=g) * 300 + 10], dim=1)
        start = time.process_time()
        select_boxes(boxes, scores, BoxRule())
        t_rule = time.process_time() - start

    print(f"images: {len(images)} x {args.repeats} repeats, 640x480 -> 600/1000, 1 thread, random weights, "
          f"torch {torch.__version__}; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"precision {precision.requested} -> {precision.name} ({precision.reason})")
    print(f"{'variant':62s} {'CPU-s/image':>11s} {'speed-up':>9s}")
    print(f"{'baseline: stock fp32, res5 (stride 2) over all 300 proposals':62s} {t_base:11.3f} {1.0:8.2f}x")
    print(f"{f'ours: {precision.name}+channels-last, folded norms, gather RoIAlign, 36 boxes':62s} {t_ours:11.3f} "
          f"{t_base / t_ours:8.2f}x")
    print(f"{'ours, res5 dilated as bottom-up attention (res5_dilation)':62s} {t_dilated:11.3f} "
          f"{t_base / t_dilated:8.2f}x")
    print(f"ours per image: min {min(seconds['ours']):.3f} max {max(seconds['ours']):.3f} CPU-s "
          f"(the spread is the machine's load: the same work each time)")
    print(f"target <= 1.0 CPU-s/image (36 boxes, 600/1000): {'met' if t_ours <= 1.0 else 'NOT met'} by the default")
    print(f"\n{'stage (CPU-s/image)':20s} {'baseline':>9s} {'ours':>9s} {'ratio':>7s}")
    for name in STAGES:
        base, mine = base_stages[name], our_stages[name]
        print(f"{name:20s} {base:9.3f} {mine:9.3f} {base / mine:6.2f}x")
    print(f"{'sum of stages':20s} {sum(base_stages.values()):9.3f} {sum(our_stages.values()):9.3f}")
    print(f"\nour features vs stock fp32 on the same boxes: cosine min {cosines.min():.6f} mean {cosines.mean():.6f} "
          f"({len(cosines)} boxes)")
    print(f"our boxes also chosen by the baseline (IoU > 0.95): {np.mean(shared):.1%} "
          f"(random weights: near-uniform class scores make the choice fragile)")
    print(f"box rule alone, 300 proposals x 1600 classes (detectron2 backend): {t_rule:.3f} CPU-s")
    if args.detectron2:
        d2 = build_extractor(backend="detectron2", weights="random", seed=SEED, device="cpu")
        d2.extract(images[:1])                                                 # warm-up
        seconds, _ = cpu_seconds_per_image({"detectron2": lambda im: d2.extract([im])}, images, 1)
        print(f"detectron2 backend (R101-C4 fp32, res5 dilated over all 300 proposals): "
              f"{np.mean(seconds['detectron2']):.3f} CPU-s/image; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
