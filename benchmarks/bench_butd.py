"""BUTD torchvision backend: CPU-seconds per image, ours against a float32 baseline, single thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_butd.py [--images 4] [--repeats 2]

Ours: the default extractor (bf16 + channels-last on CPU, box rule applied before res5, so res5 sees 36 boxes).
Baseline: the same detector and weights in float32 with res5 run over all ~300 proposals, the boxes chosen
afterwards (what extracting features for every proposal, as a detector's box head does, costs).
Both run at 600/1000 on natural photos (scikit-image's samples, resized to 640x480) with seeded random
weights (no pretrained weights on this machine; the cost does not depend on the weight values).
Also printed: the agreement of our features with float32 (cosine over boxes chosen identically) and the
cost of the box rule itself with bottom-up attention's 1600 classes.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402
from torchvision.transforms.functional import pil_to_tensor  # noqa: E402

from pipeline.butd import BoxRule, build_extractor, select_boxes  # noqa: E402
from pipeline.butd.torchvision_backend import C4_STRIDE, ROI_SIZE  # noqa: E402


def photos(n: int) -> list:
    samples = [data.astronaut, data.coffee, data.chelsea, data.rocket, data.immunohistochemistry, data.cat]
    return [Image.fromarray(samples[i % len(samples)]()).resize((640, 480)) for i in range(n)]


def baseline_extract(extractor, image):
    """Float32, res5 over every proposal, boxes chosen afterwards. Returns the chosen (K, 2048) features."""
    model = extractor.model
    batch, _ = model.transform([pil_to_tensor(image).float().div_(255)])
    body = model.backbone.body(batch.tensors)
    pyramid = model.backbone.fpn(body)
    proposals, _ = model.rpn(batch, pyramid)
    roi_features = model.roi_heads.box_roi_pool(pyramid, proposals, batch.image_sizes)
    class_logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(roi_features))
    crops = roi_align(body["2"], proposals, output_size=ROI_SIZE, spatial_scale=1.0 / C4_STRIDE,
                      sampling_ratio=2, aligned=True)                          # (300, 1024, 14, 14)
    features = extractor.res5(crops).mean(dim=(2, 3))                          # (300, 2048)
    keep, _ = select_boxes(proposals[0], class_logits.softmax(dim=1)[:, 1:], extractor.rule)
    return features[keep]


def cpu_seconds_per_image(run, images, repeats: int) -> float:
    run(images[0])                                                             # warm-up (allocations, kernels)
    start = time.process_time()
    for _ in range(repeats):
        for image in images:
            run(image)
    return (time.process_time() - start) / (repeats * len(images))


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = photos(args.images)

    ours = build_extractor(backend="torchvision", weights="random", seed=0, device="cpu")
    dilated = build_extractor(backend="torchvision", weights="random", seed=0, device="cpu", res5_dilation=True)
    fp32 = build_extractor(backend="torchvision", weights="random", seed=0, device="cpu", precision="fp32")
    with torch.inference_mode():
        t_ours = cpu_seconds_per_image(lambda im: ours.extract([im]), images, args.repeats)
        t_dilated = cpu_seconds_per_image(lambda im: dilated.extract([im]), images, args.repeats)
        t_base = cpu_seconds_per_image(lambda im: baseline_extract(fp32, im), images, args.repeats)

        # Agreement: bf16 res5 on exactly the fp32 run's boxes and C4 crops, so only the precision differs.
        cosines = []
        for image in images:
            ref = fp32.extract([image])[0]
            batch, _ = fp32.model.transform([pil_to_tensor(image).float().div_(255)])
            c4 = fp32.model.backbone.body(batch.tensors)["2"]
            scale = batch.image_sizes[0][1] / image.width, batch.image_sizes[0][0] / image.height
            boxes = torch.from_numpy(ref["boxes"]) * torch.tensor([scale[0], scale[1]] * 2)
            crops = roi_align(c4, [boxes], ROI_SIZE, 1.0 / C4_STRIDE, 2, True)
            with ours._autocast():
                low_features = ours.res5(crops.contiguous(memory_format=torch.channels_last)).float().mean((2, 3))
            high_features = fp32.res5(crops).mean((2, 3))
            cosines.append(cosine(low_features.numpy(), high_features.numpy()))
        cosines = np.concatenate(cosines)

        scores = torch.rand(300, 1600).softmax(dim=1)
        boxes = torch.rand(300, 2) * 500
        boxes = torch.cat([boxes, boxes + torch.rand(300, 2) * 300 + 10], dim=1)
        start = time.process_time()
        select_boxes(boxes, scores, BoxRule())
        t_rule = time.process_time() - start

    print(f"images: {len(images)} x {args.repeats} repeats, 640x480 -> 600/1000, 1 thread, random weights, "
          f"torch {torch.__version__}")
    print(f"{'variant':58s} {'CPU-s/image':>11s} {'speed-up':>9s}")
    print(f"{'baseline: fp32, res5 (stride 2) over all proposals':58s} {t_base:11.3f} {1.0:8.2f}x")
    print(f"{'ours: bf16+channels-last, box rule before res5 (stride 2)':58s} {t_ours:11.3f} "
          f"{t_base / t_ours:8.2f}x")
    print(f"{'ours, res5 dilated as bottom-up attention (res5_dilation)':58s} {t_dilated:11.3f} "
          f"{t_base / t_dilated:8.2f}x")
    print(f"target <= 1.0 CPU-s/image (36 boxes, 600/1000): {'met' if t_ours <= 1.0 else 'NOT met'} by the default")
    print(f"bf16 res5 vs fp32 on the same boxes: 1 - cosine max {1 - cosines.min():.2e} mean {1 - cosines.mean():.2e}")
    print(f"box rule alone, 300 proposals x 1600 classes (detectron2 backend): {t_rule:.3f} CPU-s")


if __name__ == "__main__":
    main()
