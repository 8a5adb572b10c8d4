"""The Luigi chain end to end: a CMKP release directory -> final shards, manifests, vocab, report."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import h5py
import luigi
import numpy as np
import pytest

from pipeline import shards
from durable.atomic import TMP_MARK
from pipeline.tasks import BuildDataset
from pipeline.text_tasks import text_shard_paths
from text_archive_fixture import colour_jpeg


TRAIN_SRC = [
    "so excited for the game tonight !<sep>super bowl;football<sep>https://pbs.twimg.com/media/a.jpg",
    "new album out now <url><sep>music<sep>https://pbs.twimg.com/media/b.jpg",
    "this line has no separators",
    "happy birthday <user> ! <number> years<sep>birthday<sep>https://pbs.twimg.com/media/c.jpg",
    "nothing to predict here<sep> ; <sep>https://pbs.twimg.com/media/d.jpg",
    "look at this sunset<sep>sunset;nature photography<sep>https://pbs.twimg.com/media/e.jpg",
]
TRAIN_OCR = ["", "OUT NOW\tLimited", "", "Happy 30th!", "", ""]
TRAIN_OCR_FINAL = ["", "out now limited", "", "happy", "", ""]
TRAIN_ATTR = ["people crowd stadium man game", "black man shirt glasses words", "", "cake people table candles woman",
              "", "sky sunset water orange beach"]
VALID_SRC = ["rain again in the city<sep>weather<sep>https://pbs.twimg.com/media/f.jpg",
             "go team go<sep>football<sep>"]


def release_images() -> dict[str, bytes]:
    """The release's `images/`, named by URL basename: a.jpg good, b.jpg truncated, c.jpg absent, e.jpg the
    same bytes as a.jpg, f.jpg good (valid split), and a file no post names."""
    return {"a.jpg": colour_jpeg(1), "b.jpg": colour_jpeg(2)[:300], "e.jpg": colour_jpeg(1),
            "f.jpg": colour_jpeg(6), "unused.jpg": colour_jpeg(7)}


def write_release(directory: Path, with_valid_ocr: bool = False, with_images: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if with_images:
        (directory / "images").mkdir()
        for name, data in release_images().items():
            (directory / "images" / name).write_bytes(data)
    files = {"train_src.txt": TRAIN_SRC, "train_ocr.txt": TRAIN_OCR, "train_ocr_final.txt": TRAIN_OCR_FINAL,
             "train_attribute_cleaned.txt": TRAIN_ATTR, "valid_src.txt": VALID_SRC}
    if with_valid_ocr:
        files["valid_ocr_final.txt"] = ["", "go team"]
    for name, lines in files.items():
        (directory / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return directory


@pytest.fixture
def shard_size(set_luigi_config):
    """Shards of 2 posts, so the tiny release spans several shards."""
    set_luigi_config({"SplitPosts": {"shard_size": 2}})
    return 2


def build(release: Path, out: Path, **kwargs) -> luigi.LuigiStatusCode:
    # The text half alone unless a test asks for image features (those stages have their own tests).
    task = BuildDataset(source="cmkp", input=str(release), output=str(out), **{"features": [], **kwargs})
    result = luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING", detailed_summary=True)
    return result.status


def test_cmkp_release_to_final_shards(tmp_path, shard_size):
    release = write_release(tmp_path / "release")
    out = tmp_path / "out"
    assert build(release, out) == luigi.LuigiStatusCode.SUCCESS

    # 6 train lines: 1 without separators, 1 without keyphrases -> 4 kept in 2 shards; valid: 2 posts, 1 shard.
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["crawl"] == {"read": 8, "kept": 6,
                                         "rejected": {"malformed_line": 1, "no_keyphrase": 1}}
    assert report["splits"] == {"train": 4, "valid": 2}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"], r["reason"]) for r in rejects] == [
        ("cmkp-train-2", "crawl", "malformed_line"), ("cmkp-train-4", "crawl", "no_keyphrase")]

    train = sorted((out / "train").glob("shard-*.h5"))
    assert [p.name for p in train] == ["shard-00000.h5", "shard-00001.h5"]
    assert [p.name for p in text_shard_paths(out, "train")] == ["shard-00000.h5", "shard-00001.h5"]
    first = shards.read_shard(train[0])
    assert first["post_id"].tolist() == ["cmkp-train-0", "cmkp-train-1"]
    assert first["keyphrases"].tolist() == ["super bowl;football", "music"]
    assert first["tokens"][1] == "new album out now <url>"  # the release's tokens, not re-tokenized
    assert first["text"][1] == "new album out now <url>"
    assert first["hashtags"].tolist() == ["", ""]
    assert first["image_url"][0] == "https://pbs.twimg.com/media/a.jpg"
    assert first["image_present"].tolist() == [False, False]
    assert first["image_size"].shape == (2, 2) and first["image_size"].dtype == np.int32
    assert not first["image_size"].any()
    assert first["ocr_raw"].tolist() == ["", "OUT NOW\tLimited"]
    assert first["ocr_tokens"].tolist() == ["", "out now limited"]
    assert first["attributes"][0] == "people crowd stadium man game"
    assert first["attribute_scores"].shape == (2, 5) and np.isnan(first["attribute_scores"]).all()
    attrs = shards.read_attrs(train[0])
    assert attrs["features"] == ["ocr", "attributes"]
    assert attrs["source"] == "cmkp" and attrs["split"] == "train" and attrs["shard_index"] == 0
    assert attrs["num_samples"] == 2 and attrs["format_version"] == 1 and attrs["random_weights"] is False
    assert attrs["ocr_weights"] == "cmkp-release"
    assert attrs["parameters"]["SplitPosts"]["shard_size"] == "2"
    second = shards.read_shard(train[1])
    assert second["post_id"].tolist() == ["cmkp-train-3", "cmkp-train-5"]
    assert second["keyphrases"].tolist() == ["birthday", "sunset;nature photography"]

    # valid has no side files: no feature groups; an empty image URL stays empty.
    valid = shards.read_shard(out / "valid" / "shard-00000.h5")
    assert shards.read_attrs(out / "valid" / "shard-00000.h5")["features"] == []
    assert "ocr_tokens" not in valid and valid["image_url"].tolist() == ["https://pbs.twimg.com/media/f.jpg", ""]
    assert not (out / "test").exists()

    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert (manifest["posts"], manifest["with_image"], manifest["with_ocr"]) == (4, 0, 2)
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 2]
    assert manifest["shards"][1]["sha256"] == shards.sha256_file(train[1])
    top = json.loads((out / "manifest.json").read_text())
    assert top["splits"] == {"train": {"posts": 4, "with_image": 0, "with_ocr": 2},
                             "valid": {"posts": 2, "with_image": 0, "with_ocr": 0}}
    for entry in top["files"]:
        assert shards.sha256_file(out / entry["file"]) == entry["sha256"], entry["file"]

    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["posts"] == 4
    assert vocab["keyphrase_words"] == {"super": 1, "bowl": 1, "football": 1, "music": 1, "birthday": 1,
                                        "sunset": 1, "nature": 1, "photography": 1}
    assert vocab["tokens"]["!"] == 2 and list(vocab["tokens"])[0] == "!"  # most frequent first
    assert vocab["ocr_tokens"] == {"out": 1, "now": 1, "limited": 1, "happy": 1}


def test_misaligned_side_file_is_refused(tmp_path, shard_size):
    release = write_release(tmp_path / "release")
    (release / "train_ocr_final.txt").write_text("only one line\n")
    assert build(release, tmp_path / "out") == luigi.LuigiStatusCode.FAILED
    assert not (tmp_path / "out" / "work" / "crawl").exists()  # nothing half-written
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_release_images_are_checked_and_stored_and_their_posts_kept(tmp_path, shard_size):
    release = write_release(tmp_path / "release", with_images=True)
    out = tmp_path / "out"
    assert build(release, out) == luigi.LuigiStatusCode.SUCCESS

    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["crawl", "release_images"]
    # Images of the 6 posts kept by the crawl, less valid's post without a URL: a, b, c, e, f.
    assert report["stages"]["release_images"] == {"read": 5, "kept": 3, "unit": "images",
                                                  "rejected": {"image_missing": 1, "truncated": 1}}
    assert report["splits"] == {"train": 4, "valid": 2}  # every post kept, as the release gives them
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"], r["reason"]) for r in rejects][2:] == [
        ("cmkp-train-1", "release_images", "truncated"), ("cmkp-train-3", "release_images", "image_missing")]
    assert rejects[3]["detail"] == "no images/c.jpg in the release (post kept)"

    train = shards.read_shard(out / "train" / "shard-00000.h5")
    assert train["image_present"].tolist() == [True, False]
    sha_a = hashlib.sha256(colour_jpeg(1)).hexdigest()
    assert train["image_sha256"].tolist() == [sha_a, ""] and train["image_path"].tolist() == [
        f"images/{sha_a[:2]}/{sha_a}.jpg", ""]
    assert train["image_size"].tolist() == [[64, 48], [0, 0]]
    assert train["image_url"][0] == "https://pbs.twimg.com/media/a.jpg"  # the release's URL, unchanged
    second = shards.read_shard(out / "train" / "shard-00001.h5")
    assert second["image_present"].tolist() == [False, True]
    assert second["image_sha256"][1] == sha_a  # e.jpg repeats a.jpg: kept (no dedupe), stored once
    assert (out / train["image_path"][0]).read_bytes() == colour_jpeg(1)
    sha_f = hashlib.sha256(colour_jpeg(6)).hexdigest()
    stored = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg"))
    assert stored == sorted([f"images/{sha_a[:2]}/{sha_a}.jpg", f"images/{sha_f[:2]}/{sha_f}.jpg"])
    top = json.loads((out / "manifest.json").read_text())
    assert top["splits"]["train"]["with_image"] == 2 and top["splits"]["valid"]["with_image"] == 1
    assert shards.read_shard(out / "valid" / "shard-00000.h5")["image_present"].tolist() == [True, False]


def test_same_input_gives_byte_identical_outputs(tmp_path, shard_size):
    release = write_release(tmp_path / "release", with_valid_ocr=True, with_images=True)
    assert build(release, tmp_path / "a") == luigi.LuigiStatusCode.SUCCESS
    assert build(release, tmp_path / "b") == luigi.LuigiStatusCode.SUCCESS
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 10
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_rerun_after_a_lost_shard_redoes_only_that_shard(tmp_path, shard_size):
    release = write_release(tmp_path / "release")
    out = tmp_path / "out"
    assert build(release, out) == luigi.LuigiStatusCode.SUCCESS
    # Simulate a run killed before shard 1 and everything after it were written.
    lost = [out / "train" / "shard-00001.h5", out / "work" / "text" / "train" / "shard-00001.h5",
            out / "train" / "manifest.json", out / "manifest.json"]
    for path in lost:
        path.unlink()
    kept = [p for p in out.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in kept}
    os.utime(out / "work" / "split" / "plan.json", ns=(1, 1))  # a redone stage would rewrite it
    before[out / "work" / "split" / "plan.json"] = 1
    assert build(release, out) == luigi.LuigiStatusCode.SUCCESS
    assert all(p.exists() for p in lost)
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert shards.read_shard(lost[0], ["post_id"])["post_id"].tolist() == ["cmkp-train-3", "cmkp-train-5"]
    assert not list(out.rglob(f"*{TMP_MARK}*"))


def test_benchmark_protocol_on_the_real_release(tmp_path, real_release):
    """The shared validation split cut as the benchmark protocol says: train = i % 10 != 0, valid = i % 10 == 0."""
    release = tmp_path / "release"
    release.mkdir()
    for suffix in ("src", "ocr", "ocr_final", "attribute_cleaned"):
        lines = (real_release / f"valid_{suffix}.txt").read_text(encoding="utf-8").split("\n")[:-1]
        train = [line for i, line in enumerate(lines) if i % 10]
        for split, part in (("train", train), ("valid", lines[::10])):
            (release / f"{split}_{suffix}.txt").write_text("".join(line + "\n" for line in part), encoding="utf-8")
    out = tmp_path / "out"
    assert build(release, out) == luigi.LuigiStatusCode.SUCCESS
    top = json.loads((out / "manifest.json").read_text())
    assert top["splits"]["train"]["posts"] == 4833 and top["splits"]["valid"]["posts"] == 537
    assert [f["num_samples"] for f in top["files"] if f["file"].startswith("train/shard")] == [2000, 2000, 833]
    valid = shards.read_shard(out / "valid" / "shard-00000.h5", ["post_id", "keyphrases", "ocr_tokens"])
    assert valid["post_id"][1] == "cmkp-valid-1"
    n_keyphrases = sum(len(k.split(";")) for k in valid["keyphrases"])
    assert math.isclose(n_keyphrases / 537, 1.34, abs_tol=0.05)
    with h5py.File(out / "train" / "shard-00000.h5") as f:
        assert f["attribute_scores"].shape == (2000, 5)
