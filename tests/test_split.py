"""The 80/10/10 split: seeded, independent of crawl order, and the whole build byte-identical on rerun."""
from __future__ import annotations

import random

import luigi
import pytest

from pipeline.tasks import BuildDataset
from pipeline.text_tasks import SplitPosts
from text_archive_fixture import write_archive


def assign(records, seed=13):
    task = SplitPosts(source="archive", input_path="unused", dataset_dir="unused", seed=seed)
    return {split: [r["id"] for r in members] for split, members in task.assign([dict(r) for r in records]).items()}


def test_split_fractions_seed_and_order_independence():
    records = [{"id": f"{i:04d}"} for i in range(1000)]
    split = assign(records)
    assert {k: len(v) for k, v in split.items()} == {"train": 800, "valid": 100, "test": 100}
    assert sorted(sum(split.values(), [])) == [r["id"] for r in records]  # a partition
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert assign(shuffled) == split  # crawl order does not matter
    assert assign(records, seed=14) != split


def test_cmkp_splits_are_kept():
    task = SplitPosts(source="cmkp", input_path="unused", dataset_dir="unused")
    records = [{"id": "a", "split": "valid"}, {"id": "b", "split": "train"}, {"id": "c", "split": "valid"}]
    assert {k: [r["id"] for r in v] for k, v in task.assign(records).items()} == {"valid": ["a", "c"], "train": ["b"]}


@pytest.fixture
def small_config(set_luigi_config):
    set_luigi_config({"FilterHashtags": {"min_hashtag_count": 1}})


def test_archive_build_is_byte_identical(tmp_path, small_config):
    archive = write_archive(tmp_path / "archive")
    for name in ("a", "b"):
        task = BuildDataset(source="archive", input=str(archive), output=str(tmp_path / name), features=[])
        assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert any(p.suffix == ".h5" for p in files) and any(p.parts[0] == "images" for p in files)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
