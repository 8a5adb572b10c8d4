"""Random-access reads of VGG grids: the model's loader (model.data.ImageFeatures.read) vs raw h5py
single-sample reads of the same rows, same shard, one run.

    .venv/bin/python benchmarks/bench_shard_read.py [--samples 1000] [--reads 5000]
The shard is written by pipeline.shards.write_shard (float16, one sample per chunk, uncompressed) into a
temporary directory; both readers read it once before timing so the OS page cache is warm for both.
"""
import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from model.data import ImageFeatures
from pipeline import shards


def write_test_shard(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    columns = {name: [""] * n for name, dtype in shards.TEXT_COLUMNS.items() if dtype is shards.STR}
    columns.update(post_id=[str(i) for i in range(n)], image_present=np.ones(n, bool),
                   image_size=np.full((n, 2), 224, np.int32),
                   vgg=rng.standard_normal((n, 49, 512), dtype=np.float32).astype(np.float16))
    shards.write_shard(path, columns, {"split": "train", "shard_index": 0, "source": "archive"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "shard-00000.h5")
        write_test_shard(path, args.samples)
        rows = np.random.default_rng(1).integers(0, args.samples, args.reads).tolist()

        with h5py.File(path, "r") as f:
            dataset = f["vgg"]
            for row in range(args.samples):          # warm the page cache
                dataset[row]
            start = time.perf_counter()
            for row in rows:
                dataset[row]
            raw_rate = len(rows) / (time.perf_counter() - start)

        loader = ImageFeatures([path], "vgg")
        for row in range(args.samples):
            loader.read(0, row)
        start = time.perf_counter()
        for row in rows:
            loader.read(0, row)
        loader_rate = len(rows) / (time.perf_counter() - start)
        # For comparison: what a loader holding the dataset handle and converting in torch gets.
        import torch
        with h5py.File(path, "r") as f:
            dataset = f["vgg"]
            start = time.perf_counter()
            for row in rows:
                torch.from_numpy(dataset[row]).float()
            cached_rate = len(rows) / (time.perf_counter() - start)
        features, regions = loader.read(0, rows[0])
        assert features.shape == (49, 512) and regions == 49

    print(f"shard: {args.samples} samples of vgg (49, 512) float16, chunks (1, 49, 512); {args.reads} random reads")
    print(f"raw h5py dataset[row]               : {raw_rate:10.0f} samples/s")
    print(f"model.data.ImageFeatures.read(0,row): {loader_rate:10.0f} samples/s")
    print(f"held dataset handle + torch float : {cached_rate:10.0f} samples/s ({cached_rate / raw_rate:.2f}x raw)")
    print(f"ratio loader/raw: {loader_rate / raw_rate:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
