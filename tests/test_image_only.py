"""Image-feature reading through the model's loader (model.data.ImageFeatures): exact values, BUTD region
counts, a fresh handle per process, and the clear error for a shard that breaks the one-chunk-per-sample rule."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from model.data import ImageFeatures
from pipeline import shards


def write_features_shard(path, n=6):
    rng = np.random.default_rng(0)
    columns = {name: [""] * n for name, dtype in shards.TEXT_COLUMNS.items() if dtype is shards.STR}
    num_boxes = np.array([36, 10, 0, 25, 36, 1], np.int16)[:n]
    butd = rng.standard_normal((n, 36, 2048), dtype=np.float32)
    butd[np.arange(36)[None, :] >= num_boxes[:, None]] = 0
    columns.update(post_id=[str(i) for i in range(n)], image_present=np.ones(n, bool),
                   image_size=np.full((n, 2), 224, np.int32),
                   vgg=rng.standard_normal((n, 49, 512), dtype=np.float32).astype(np.float16),
                   butd=butd.astype(np.float16), butd_boxes=np.zeros((n, 36, 4), np.float32),
                   butd_num_boxes=num_boxes, butd_objects=np.zeros((n, 36), np.int16),
                   butd_object_scores=np.zeros((n, 36), np.float16),
                   butd_attributes=np.zeros((n, 36), np.int16),
                   butd_attribute_scores=np.zeros((n, 36), np.float16))
    shards.write_shard(path, columns, {"split": "train", "shard_index": 0, "source": "archive"})
    return columns


def test_read_returns_the_stored_rows_and_region_counts(tmp_path):
    first, second = tmp_path / "shard-00000.h5", tmp_path / "shard-00001.h5"
    columns = write_features_shard(first)
    write_features_shard(second, n=4)
    vgg, butd = ImageFeatures([first, second], "vgg"), ImageFeatures([first, second], "butd")
    for row in [5, 0, 3, 2]:
        features, regions = vgg.read(0, row)
        assert features.dtype == torch.float16 and features.shape == (49, 512) and regions == 49
        assert torch.equal(features, torch.from_numpy(columns["vgg"][row]))
        features, regions = butd.read(0, row)
        assert features.shape == (36, 2048) and regions == int(columns["butd_num_boxes"][row])
        assert torch.equal(features, torch.from_numpy(columns["butd"][row]))
    with h5py.File(second, "r") as f:
        assert torch.equal(vgg.read(1, 3)[0], torch.from_numpy(f["vgg"][3]))
    # A DataLoader worker gets the reader pickled: no open handles travel, the copy opens its own.
    copy = pickle.loads(pickle.dumps(vgg))
    assert copy._shards is None and torch.equal(copy.read(0, 1)[0], vgg.read(0, 1)[0])


def test_a_forked_worker_reopens_the_shards(tmp_path):
    path = tmp_path / "shard-00000.h5"
    columns = write_features_shard(path)
    vgg = ImageFeatures([path], "vgg")
    vgg.read(0, 0)                      # the parent holds open handles before the workers fork
    loader = torch.utils.data.DataLoader(range(6), batch_size=None, num_workers=1,
                                         collate_fn=lambda row: vgg.read(0, row)[0],
                                         multiprocessing_context="fork")
    for row, features in enumerate(loader):
        assert torch.equal(features, torch.from_numpy(columns["vgg"][row]))

def test_compressed_features_are_refused_with_the_format_rule(tmp_path):
    path = tmp_path / "shard-00000.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vgg", data=np.zeros((3, 49, 512), np.float16), chunks=(1, 49, 512), compression="gzip")
    with pytest.raises(ValueError, match="one uncompressed sample per chunk"):
        ImageFeatures([path], "vgg").read(0, 0)
