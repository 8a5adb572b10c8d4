"""Image stages as Luigi tasks on a small dataset directory made here (text shard + images), joined by
pipeline.tasks.AssembleShard: shapes, dtypes, masks, provenance, a killed-then-rerun shard, missing weights."""
import json
import os
import sys

import h5py
import luigi
import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline import image_tasks, shards, tasks
from pipeline.weights import WeightsNotFoundError

sys.path.insert(0, os.path.dirname(__file__))
from ocr_images import render  # noqa: E402

FEATURES = ["ocr", "attributes", "vgg", "butd"]
# Random weights, tiny training: the tasks' real code paths at test cost.
CONFIG = {
    "ExtractVGG": {"vgg_weights": "random:0", "device": "cpu"},
    "ExtractBUTD": {"butd_weights": "random:0", "device": "cpu"},
    "TrainAttributePredictor": {"attribute_arch": "resnet18", "attribute_backbone_weights": "random:0",
                                "attribute_vocab_size": 30, "attribute_image_size": 32, "attribute_epochs": 2,
                                "attribute_batch_size": 8, "device": "cpu"},
    "PredictAttributes": {"device": "cpu"},
    "RunOCR": {"workers": "1"},
}


@pytest.fixture
def luigi_config(set_luigi_config):
    set_luigi_config(CONFIG)


def make_dataset(out):
    """Four posts: rendered meme text, a photo, a post without image, a plain-text image."""
    (out / "images").mkdir(parents=True)
    images = {"p1": render("outline", ["national coffee day", "morning brew time"]),
              "p2": Image.fromarray(skimage.data.chelsea()),
              "p4": render("plain", ["wildflower hour", "spring garden walk"])}
    for name, image in images.items():
        image.convert("RGB").save(out / "images" / f"{name}.jpg", quality=92)
    records = [
        {"id": "p1", "tokens": "morning coffee time national day", "keyphrases": ["national coffee day"]},
        {"id": "p2", "tokens": "my cat", "keyphrases": ["caturday"]},
        {"id": "p3", "tokens": "no picture here", "keyphrases": ["text only"]},
        {"id": "p4", "tokens": "a garden walk in spring", "keyphrases": ["wildflower hour"]},
    ]
    split = out / "work" / "split"
    split.mkdir(parents=True)
    (split / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (split / "plan.json").write_text(json.dumps({"shard_size": 4, "source": "archive", "parameters": {},
                                                 "splits": {"train": {"posts": 4, "shards": 1}}}))
    present = [r["id"] in images for r in records]
    columns = {"post_id": [r["id"] for r in records], "text": [r["tokens"] for r in records],
               "tokens": [r["tokens"] for r in records], "keyphrases": [";".join(r["keyphrases"]) for r in records],
               "hashtags": [""] * 4, "image_url": [""] * 4, "image_sha256": [""] * 4,
               "image_path": [f"images/{r['id']}.jpg" if p else "" for r, p in zip(records, present)],
               "image_present": present,
               "image_size": [list(images[r["id"]].size) if p else [0, 0] for r, p in zip(records, present)]}
    (out / "work" / "text" / "train").mkdir(parents=True)
    shards.write_shard(out / "work" / "text" / "train" / "shard-00000.h5", columns,
                       {"split": "train", "shard_index": 0, "source": "archive"})


def assemble(out, features=FEATURES):
    return tasks.AssembleShard(source="archive", input_path=str(out / "in"), dataset_dir=str(out), split="train",
                               shard_index=0, features=features)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(tasks, "FEATURE_TASKS", dict(image_tasks.IMAGE_FEATURE_TASKS))


def test_a_shard_holding_any_random_weights_group_says_so_whatever_the_groups_order(tmp_path, luigi_config,
                                                                                   registered):
    """random_weights is true when any group's weights are seeded random, also when a group without random weights
    (OCR here; the sentence embeddings in make demo) is assembled after it."""
    make_dataset(tmp_path)
    assert luigi.build([assemble(tmp_path, features=["vgg", "ocr"])], local_scheduler=True, workers=1)
    attrs = shards.read_attrs(tmp_path / "train" / "shard-00000.h5")
    assert attrs["vgg_weights"].startswith("random(") and attrs["random_weights"] is True


def test_every_stage_into_an_assembled_shard_then_a_killed_shard_reruns(tmp_path, luigi_config, registered):
    make_dataset(tmp_path)
    assert luigi.build([assemble(tmp_path)], local_scheduler=True, workers=1)
    final = tmp_path / "train" / "shard-00000.h5"
    data = shards.read_shard(final)
    attrs = shards.read_attrs(final)
    assert attrs["features"] == FEATURES and attrs["random_weights"] is True and attrs["num_samples"] == 4
    present = data["image_present"]
    assert present.tolist() == [True, True, False, True]
    # VGG grids: shape, dtype, zeros exactly where there is no image.
    assert data["vgg"].shape == (4, 49, 512) and data["vgg"].dtype == np.float16
    assert not data["vgg"][2].any() and all(data["vgg"][i].any() for i in (0, 1, 3))
    # BUTD: 36 boxes x 2048, zero rows past num_boxes, nothing for the post without image.
    assert data["butd"].shape == (4, 36, 2048) and data["butd_boxes"].shape == (4, 36, 4)
    assert data["butd_num_boxes"][2] == 0 and all(1 <= data["butd_num_boxes"][i] <= 36 for i in (0, 1, 3))
    for i in (0, 1, 3):
        k = data["butd_num_boxes"][i]
        assert np.isfinite(data["butd"][i, :k].astype(np.float32)).all() and not data["butd"][i, k:].any()
    assert len(attrs["butd_object_vocab"]) > 0 and attrs["butd_weights"] == "random(seed=0)"
    # OCR: the rendered text is read and cleaned against the corpus vocabulary; no text for the cat photo.
    assert set(data["ocr_tokens"][0].split()) == {"national", "coffee", "day", "morning", "time"}
    assert data["ocr_tokens"][1] == "" and data["ocr_raw"][2] == "" and data["ocr_tokens"][2] == ""
    # "hour" and "spring garden walk": 4 tokens in the vocabulary, all longer than 3 characters.
    assert set(data["ocr_tokens"][3].split()) == {"wildflower", "hour", "spring", "garden", "walk"}
    counts = attrs["ocr_meta"]["counts"]
    assert counts["images"] == 3 and counts["with_ocr_tokens"] == 2 and counts["with_raw_text"] >= 2
    # Attributes: 5 words and descending scores per image; empty and zero without image.
    assert data["attribute_scores"].shape == (4, 5) and data["attribute_scores"].dtype == np.float32
    assert data["attributes"][2] == "" and not data["attribute_scores"][2].any()
    assert all(len(data["attributes"][i].split()) == 5 for i in (0, 1, 3))
    assert attrs["attributes_meta"]["arch"] == "resnet18"
    assert attrs["vgg_meta"]["resize"] == "lanczos"
    # Every image model records the precision it ran in, and why.
    for group in ("vgg", "butd", "attributes"):
        assert attrs[f"{group}_meta"]["precision"] in ("fp32", "bf16", "fp16")
        assert attrs[f"{group}_meta"]["precision_requested"] == "auto" and attrs[f"{group}_meta"]["precision_reason"]
    # Chunked one sample per chunk along the first axis.
    with h5py.File(final) as f:
        assert f["vgg"].chunks == (1, 49, 512) and f["butd"].chunks == (1, 36, 2048)

    # Kill simulation: the VGG work shard and the final shard are gone, a partial temp file is left behind.
    work = {g: tmp_path / "work" / g / "train" / "shard-00000.h5" for g in FEATURES}
    mtimes = {g: p.stat().st_mtime_ns for g, p in work.items()}
    vgg_before = data["vgg"]
    work["vgg"].unlink()
    final.unlink()
    (work["vgg"].parent / "shard-00000.h5-luigi-tmp-0000000001").write_bytes(b"partial")
    assert luigi.build([assemble(tmp_path)], local_scheduler=True, workers=1)
    assert {g: work[g].stat().st_mtime_ns for g in FEATURES if g != "vgg"} == \
        {g: t for g, t in mtimes.items() if g != "vgg"}                       # only the missing shard was redone
    np.testing.assert_array_equal(shards.read_shard(final, ["vgg"])["vgg"], vgg_before)


def test_feature_subset_and_missing_weights_error(tmp_path, luigi_config, registered, monkeypatch):
    make_dataset(tmp_path)
    assert luigi.build([assemble(tmp_path, features=["vgg"])], local_scheduler=True, workers=1)
    attrs = shards.read_attrs(tmp_path / "train" / "shard-00000.h5")
    assert attrs["features"] == ["vgg"]
    with h5py.File(tmp_path / "train" / "shard-00000.h5") as f:
        assert "butd" not in f and "ocr_tokens" not in f
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    task = image_tasks.ExtractVGG(source="archive", input_path="x", dataset_dir=str(tmp_path / "other"),
                                  split="train", shard_index=0, vgg_weights="IMAGENET1K_V1")
    make_dataset(tmp_path / "other")
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth.*torch"):
        task.run()


def check_built_dataset(out):
    """What a finished BuildDataset directory with image features holds; returns OCR counts over all shards."""
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    for stage, counts in report["stages"].items():
        assert counts["read"] == counts["kept"] + sum(counts["rejected"].values()), stage
    assert len(rejects) == sum(sum(c["rejected"].values()) for c in report["stages"].values())
    ocr_counts = {"images": 0, "with_raw_text": 0, "with_ocr_tokens": 0}
    images_seen = 0
    for split, counts in manifest["splits"].items():
        assert counts["posts"] == report["splits"][split]
        split_manifest = json.loads((out / split / "manifest.json").read_text())
        n = with_image = 0
        for entry in split_manifest["shards"]:
            path = out / split / entry["file"]
            assert shards.sha256_file(path) == entry["sha256"]
            data, attrs = shards.read_shard(path), shards.read_attrs(path)
            n += attrs["num_samples"]
            present = data["image_present"]
            with_image += int(present.sum())
            assert attrs["random_weights"] is True
            if "vgg" in attrs["features"]:
                assert data["vgg"].shape == (len(present), 49, 512) and data["vgg"].dtype == np.float16
                assert not data["vgg"][~present].any() and all(g.any() for g in data["vgg"][present])
                assert attrs["vgg_weights"].startswith("random(seed=")
            if "butd" in attrs["features"]:
                assert data["butd"].shape[1:] == (36, 2048) and data["butd"].dtype == np.float16
                assert (data["butd_num_boxes"][~present] == 0).all() and (data["butd_num_boxes"][present] > 0).all()
            if "attributes" in attrs["features"]:
                assert all(len(a.split()) == 5 for a in data["attributes"][present])
                assert not any(data["attributes"][~present])
            if "ocr" in attrs["features"]:
                assert not any(data["ocr_raw"][~present])
                for key in ocr_counts:
                    ocr_counts[key] += attrs["ocr_meta"]["counts"][key]
        assert n == counts["posts"] == split_manifest["posts"]
        assert with_image == split_manifest["with_image"], split
        images_seen += with_image
    assert images_seen > 0  # the checks over present images above are not vacuous
    return ocr_counts


DEMO = os.path.join(os.path.dirname(__file__), "..", "build", "sample")


@pytest.mark.skipif(not os.path.exists(os.path.join(DEMO, "manifest.json")),
                    reason="build/sample has not been built: run `make demo` first")
def test_demo_dataset_built_by_make_demo():
    from pathlib import Path

    manifest = json.loads(Path(DEMO, "manifest.json").read_text())
    assert set(manifest["features"]) == set(FEATURES) | {"text_embedding"}     # demo.cfg adds the embeddings
    counts = check_built_dataset(Path(DEMO))
    assert counts["images"] > 0 and counts["with_ocr_tokens"] <= counts["with_raw_text"] <= counts["images"]
