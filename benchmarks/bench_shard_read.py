"""Random-access reads of VGG grids: the model's loader (model.data.ImageFeatures.read) vs raw h5py
single-sample reads of the same rows, same shard, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shard_read.py [--samples 1000] [--reads 5000] [--rounds 5]
The shard is written by pipeline.shards.write_shard (float16, one sample per chunk, uncompressed) into a
temporary directory; both readers read it once before timing so the OS page cache is warm for both. The two
are timed in alternating rounds (the machine is shared; the best round of each is reported). Both are also
timed with the float32 copy a batch needs (raw: torch.from_numpy(x).float(); loader: what collate does).
"""
import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from model.data import ImageFeatures
from pipeline import shards


def write_test_shard(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    columns = {name: [""] * n for name, dtype in shards.TEXT_COLUMNS.items() if dtype is shards.STR}
    columns.update(post_id=[str(i) for i in range(n)], image_present=np.ones(n, bool),
                   image_size=np.full((n, 2), 224, np.int32),
                   vgg=rng.standard_normal((n, 49, 512), dtype=np.float32).astype(np.float16))
    shards.write_shard(path, columns, {"split": "train", "shard_index": 0, "source": "archive"})


def rate(read, rows) -> float:
    start = time.perf_counter()
    for row in rows:
        read(row)
    return len(rows) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "shard-00000.h5")
        write_test_shard(path, args.samples)
        rows = np.random.default_rng(1).integers(0, args.samples, args.reads).tolist()
        batch_row = torch.empty(49, 512)
        with h5py.File(path, "r") as f:
            dataset = f["vgg"]
            loader = ImageFeatures([path], "vgg")
            readers = {
                "raw h5py dataset[row]": lambda row: dataset[row],
                "ImageFeatures.read(0, row)": lambda row: loader.read(0, row),
                "raw + torch float32": lambda row: torch.from_numpy(dataset[row]).float(),
                "read + float32 batch copy": lambda row: batch_row.copy_(loader.read(0, row)[0]),
            }
            for read in readers.values():           # warm the page cache and open the loader's handles
                rate(read, range(args.samples))
            best = {name: 0.0 for name in readers}
            for _ in range(args.rounds):
                for name, read in readers.items():
                    best[name] = max(best[name], rate(read, rows))
            features, regions = loader.read(0, rows[0])
            assert torch.equal(features, torch.from_numpy(dataset[rows[0]])) and regions == 49

    print(f"shard: {args.samples} samples of vgg (49, 512) float16, chunks (1, 49, 512); {args.reads} random "
          f"reads, best of {args.rounds} alternating rounds, one thread")
    for name, value in best.items():
        print(f"{name:28s}: {value:10.0f} samples/s")
    raw = best["raw h5py dataset[row]"]
    print(f"ratio loader/raw: {best['ImageFeatures.read(0, row)'] / raw:.2f}x (target >= 0.8x)")
    print(f"ratio with the float32 copy, loader/raw: "
          f"{best['read + float32 batch copy'] / best['raw + torch float32']:.2f}x")


if __name__ == "__main__":
    main()
