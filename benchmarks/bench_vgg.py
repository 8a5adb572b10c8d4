"""VGG-16 grid extraction on CPU: ours (the precision `auto` picks, channels-last, batched, inference_mode) vs the
authors' way (fp32, NCHW, batch 1, torch.no_grad), same images, same (random) weights, one run.

    .venv/bin/python benchmarks/bench_vgg.py [--images 16] [--threads 1] [--precision auto|fp32|bf16]
Prints which precision ours ran in and why (pipeline/precision.py: bf16 only on a CPU with native bf16),
CPU seconds per image for both (time.process_time: one thread, so other processes on a shared machine inflate
it less than wall time), the speed ratio, and the cosine similarity of our grids to fp32. Then loading the
weights from a state-dict file: ours (`build_loaded`: the network built on the meta device, then given the file's
tensors) vs building it with its random init and loading over that; both read the same file, neither hashes it.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

import torchvision

from pipeline.vgg import VGGConfig, VGGGridExtractor
from pipeline.weights import build_loaded, load_state_dict


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    images = [Image.fromarray(photos[i % len(photos)]).rotate(7 * i) for i in range(args.images)]

    ours = VGGGridExtractor(VGGConfig(weights="random:0", precision=args.precision, batch_size=args.batch_size,
                                      device="cpu"))
    batch = torch.stack([ours.preprocess(im) for im in images])
    # Baseline: the same network in fp32, NCHW, one image at a time under no_grad.
    baseline_net = ours.net.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        baseline_net(batch[:1])                            # warm-up
        start = time.process_time()
        reference = [baseline_net(x[None]) for x in batch]
        baseline_s = (time.process_time() - start) / len(images)
    reference = torch.cat(reference).permute(0, 2, 3, 1).reshape(len(images), 49, 512).numpy()

    ours.net = ours.net.to(memory_format=torch.channels_last)
    ours.forward(batch[:2])                                # warm-up
    start = time.process_time()
    grids = np.concatenate([ours.forward(batch[i:i + args.batch_size])
                            for i in range(0, len(batch), args.batch_size)])
    ours_s = (time.process_time() - start) / len(images)

    a, b = grids.reshape(len(images), -1).astype(np.float64), reference.reshape(len(images), -1).astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    region_a, region_b = grids.reshape(-1, 512).astype(np.float64), reference.reshape(-1, 512).astype(np.float64)
    norms = np.linalg.norm(region_a, axis=1) * np.linalg.norm(region_b, axis=1)
    region_cos = ((region_a * region_b).sum(1) / np.where(norms > 0, norms, 1))[norms > 0]
    precision = ours.precision
    print(f"images={len(images)} threads={args.threads} batch={args.batch_size} (preprocessing excluded)")
    print(f"precision {precision.requested} -> {precision.name} ({precision.reason})")
    print(f"baseline fp32 NCHW batch 1 no_grad : {baseline_s:.4f} CPU-s/image")
    print(f"ours {precision.name} channels-last batched    : {ours_s:.4f} CPU-s/image")
    print(f"speed ratio ours/baseline          : {baseline_s / ours_s:.2f}x (ours in {precision.name}, "
          f"{'auto chose it' if precision.requested == 'auto' else 'requested'})")
    print(f"cosine to fp32 per image           : min {cosine.min():.6f} mean {cosine.mean():.6f} (target >= 0.999)")
    print(f"cosine to fp32 per region vector   : min {region_cos.min():.6f} mean {region_cos.mean():.6f}")
    load_weights(args.threads)


def load_weights(threads: int):
    """CPU seconds to load VGG-16 weights from a local file: the random init then the file vs the file alone."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "vgg16.pth")
        torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
        start = time.process_time()
        baseline = torchvision.models.vgg16(weights=None)
        baseline.load_state_dict(load_state_dict(path))
        baseline_s = time.process_time() - start
        start = time.process_time()
        ours = build_loaded(lambda: torchvision.models.vgg16(weights=None), load_state_dict(path))
        ours_s = time.process_time() - start
        same = all(torch.equal(a, b) for a, b in zip(baseline.state_dict().values(), ours.state_dict().values()))
    print(f"weights load, local file, {threads} thread(s): baseline (random init, then the file) {baseline_s:.2f} "
          f"CPU-s, ours (meta device, then the file) {ours_s:.2f} CPU-s: {baseline_s / ours_s:.2f}x, "
          f"same tensors: {same}")


if __name__ == "__main__":
    main()
