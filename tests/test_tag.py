"""Tagging posts a model never saw (model.tagging, pipeline.tag_tasks, cmkp-tag) on a tiny trained run
(tests/tag_fixture.py): every source into TagPosts, the posts source's JSONL and CSV, posts without or with a
rejected image, duplicates, scores against the posts' own hashtags, counts reconciling, the refusals, the
Python API on one post and on a batch, cmkp-tag on standard input, and that tagging featurises a post exactly
as the training shards did."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import luigi
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from model.data import Post
from model.provenance import FEATURISATION, FeaturisationError
from model.tagging import Tagger, score
from pipeline import shards
from pipeline.report import StageLog
from pipeline.sources.posts import read_posts
from pipeline.tasks import TagPosts
from tag_fixture import TOPICS, build_runs, gray_jpeg, photo_bytes, topic_posts, write_topic_archive
from test_api_crawl import TWEETS, server, token  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_text_encoder):
    return build_runs(tmp_path_factory.mktemp("tag"), tiny_text_encoder)


@pytest.fixture(scope="module")
def tagger(runs):
    with Tagger.load(runs["image"], device="cpu", ocr_workers=1, batch_size=8) as t:
        yield t


def tag_posts(runs, source, input_path, out, run="image", **params) -> dict:
    task = TagPosts(model=str(runs[run]), source=source, input=str(input_path), output=str(out), device="cpu",
                    ocr_workers=1, **params)
    assert luigi.build([task], local_scheduler=True, workers=1)
    lines = [json.loads(line) for line in (out / "tags.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == report["tagged"] + sum(report["rejected"].values()) == len(lines)
    tagged = {line["id"]: line for line in lines if "keyphrases" in line}
    assert len(tagged) == report["tagged"]
    # a rejected record is named by its id (a repeated id: the repeat), or where it was read
    rejected = [line for line in lines if "rejected" in line]
    return {"lines": {**{line["id"]: line for line in rejected}, **tagged}, "rejected": rejected, "report": report}


def new_posts_file(directory: Path) -> Path:
    """Posts never seen in training: a topic photo, a duplicate of it under another id, a post without an
    image, a grayscale image (rejected: tagged from its text), a missing file, a malformed line."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cup.jpg").write_bytes(photo_bytes(TOPICS["CoffeeTime"][0], 7, size=(90, 70)))
    (directory / "gray.jpg").write_bytes(gray_jpeg())
    rows = [{"id": "n1", "text": "Such a lovely cup with friends this morning #CoffeeTime", "image": "cup.jpg"},
            {"id": "n2", "text": "Such a lovely cup with friends this morning #CoffeeTime", "image": "cup.jpg"},
            {"id": "n3", "text": "No picture, just the night sky and the stars again #DeepSpace"},
            {"id": "n4", "text": "A grey picture of the kitty having a nap #CatLife", "image": "gray.jpg"},
            {"id": "n5", "text": "where did the picture go", "image": "nowhere.jpg"}]
    path = directory / "posts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path


def test_posts_source_reads_jsonl_and_csv_and_rejects_what_it_cannot_use(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "hello", "image": "x.jpg"}\n[1, 2]\nnope\n'
                                      '{"text": "no id"}\n{"id": "2"}\n{"id": "1", "text": "again"}\n'
                                      '{"id": "3", "text": "far", "image": "https://example.invalid/p.jpg"}\n')
    with open(tmp_path / "b.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["id", "text", "image"], ["4", "from a csv, with a comma", "/abs/y.jpg"],
                          ["5", "too", "many", "fields"], ["6", "", ""]])
    log = StageLog("crawl")
    records = list(read_posts(tmp_path, log))
    assert [r["id"] for r in records] == ["1", "3", "4"]
    assert records[0]["media"] == [{"media_key": "image", "type": "photo", "url": "",
                                    "file": str(tmp_path / "x.jpg")}]
    assert records[1]["media"][0]["url"] == "https://example.invalid/p.jpg" and not records[1]["media"][0]["file"]
    assert records[2]["text"] == "from a csv, with a comma" and records[2]["media"][0]["file"] == "/abs/y.jpg"
    assert log.counts() == {"read": 10, "kept": 3, "rejected": {
        "duplicate_id": 1, "empty_post": 2, "malformed_json": 1, "missing_id": 1, "not_an_object": 1,
        "unrecognized_line": 1}}
    assert {r["id"] for r in log.rejects} >= {"a.jsonl:2", "a.jsonl:3", "a.jsonl:4", "b.csv:3", "2", "6"}


def test_tagposts_on_new_posts(runs, tmp_path):
    out = tag_posts(runs, "posts", new_posts_file(tmp_path / "in"), tmp_path / "out")
    lines, report = out["lines"], out["report"]
    assert report["read"] == 6 and report["tagged"] == 5 and report["rejected"] == {"malformed_json": 1}
    assert report["stages"]["crawl"] == {"read": 6, "kept": 5, "rejected": {"malformed_json": 1}}
    assert lines["posts.jsonl:6"]["rejected"] == "malformed_json"
    for line in (lines[i] for i in ("n1", "n2", "n3", "n4", "n5")):
        assert 1 <= len(line["keyphrases"]) <= 10 and all(isinstance(k["score"], float) for k in line["keyphrases"])
        scores = [k["score"] for k in line["keyphrases"]]
        assert scores == sorted(scores, reverse=True)
    # The duplicate gets the same answer; a post without image, or with a rejected one, has no vision.
    assert lines["n1"]["keyphrases"] == lines["n2"]["keyphrases"]
    assert "vision" in lines["n1"]["modalities"] and "attributes" in lines["n1"]["modalities"]
    assert lines["n3"]["modalities"] == ["text"] and "image_rejected" not in lines["n3"]
    assert lines["n4"]["modalities"] == ["text"] and lines["n4"]["image_rejected"]["reason"] == "grayscale"
    assert lines["n5"]["image_rejected"]["reason"] == "image_missing"
    # Trailing hashtags are the gold, kept out of the input; the report scores the posts that had them.
    assert lines["n1"]["gold"] == ["coffee time"] and "gold" not in lines["n5"]
    assert report["score"] == score([lines[i] for i in ("n1", "n2", "n3", "n4", "n5")])
    assert report["score"]["posts"] == 4
    assert report["modalities"] == {"attributes": 2, "text": 5, "vision": 2}
    assert report["images_rejected"] == {"grayscale": 1, "image_missing": 1}
    assert report["tagger"]["random_weights"] is True and "random" in report["random_weights"]
    assert report["tagger"]["groups"]["vgg"]["weights"] == "random(seed=0)"


def test_tagposts_from_csv_with_the_training_filters(runs, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "gray.jpg").write_bytes(gray_jpeg())
    with open(tmp_path / "in" / "posts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "image", "lang"],
                                 ["c1", "a warm latte in the cafe this morning #CoffeeTime", "", "en"],
                                 ["c2", "too short #CoffeeTime", "", "en"],
                                 ["c3", "un café très chaud ce matin avec des amis #CoffeeTime", "", "fr"],
                                 ["c4", "a sleepy kitty on the sofa today #CatLife", "gray.jpg", "en"],
                                 ["c5", "nothing tagged in this one at all today", "", "en"]])
    everything = tag_posts(runs, "posts", tmp_path / "in" / "posts.csv", tmp_path / "all")
    assert everything["report"]["tagged"] == 5                   # no filter by default
    filtered = tag_posts(runs, "posts", tmp_path / "in" / "posts.csv", tmp_path / "train", filters="train")
    lines, report = filtered["lines"], filtered["report"]
    # The posts source has no media type check in FilterPosts' sense: c1's missing image is no_image there.
    assert report["read"] == 5
    assert {i: lines[i].get("rejected") for i in lines} == {
        "c1": "no_image", "c2": "no_image", "c3": "not_english", "c4": "grayscale", "c5": "no_image"}
    assert report["stages"]["filter"]["rejected"] == {"no_image": 3, "not_english": 1}
    assert report["stages"]["tag"] == {"read": 1, "kept": 0, "rejected": {"grayscale": 1}}


def test_each_source_into_tagposts(runs, tmp_path, server, token):  # noqa: F811  (fixtures)
    # archive: new posts in a twarc2 archive (one repeated tweet id, rejected by the crawl as in training)
    archive_posts = topic_posts(n_per_topic=2, start_id=900)
    archive = write_topic_archive(tmp_path / "archive", archive_posts)
    with open(archive / "page.jsonl", "a") as f:
        f.write(json.dumps(archive_posts[0][0]) + "\n")
    out = tag_posts(runs, "archive", archive, tmp_path / "t-archive")
    assert out["report"]["tagged"] == 6 and out["report"]["rejected"] == {"duplicate_id": 1}
    assert [(r["id"], r["stage"]) for r in out["rejected"]] == [("900", "crawl")]
    assert all("vision" in out["lines"][t["id"]]["modalities"] for t, _, _ in archive_posts)
    # cmkp: a release directory (its own tokens and keyphrases; no images folder)
    release = tmp_path / "release"
    release.mkdir()
    (release / "test_src.txt").write_text("a warm cup in the cafe<sep>coffee time<sep>https://x.invalid/a.jpg\n"
                                          "broken line\n"
                                          "stars over the galaxy tonight<sep>deep space;night<sep>\n")
    out = tag_posts(runs, "cmkp", release, tmp_path / "t-cmkp")
    assert out["report"]["tagged"] == 2 and out["report"]["rejected"] == {"malformed_line": 1}
    assert out["lines"]["cmkp-test-2"]["gold"] == ["deep space", "night"]
    assert out["lines"]["cmkp-test-0"]["modalities"] == ["text"]
    # api and ids: the loopback API server of test_api_crawl (images over HTTP)
    with_api = {"CrawlTweets": {"api_base_url": server.url, "token_env": token}}
    from tag_fixture import luigi_settings
    with luigi_settings(with_api):
        out = tag_posts(runs, "api", "#SuperBowl", tmp_path / "t-api")
        assert out["report"]["tagged"] == len(TWEETS) and not out["report"]["rejected"]
        assert all("vision" in line["modalities"] for line in out["lines"].values())
        ids = tmp_path / "ids.txt"
        ids.write_text("1\n2\n99\n")
        out = tag_posts(runs, "ids", ids, tmp_path / "t-ids")
        assert out["report"]["tagged"] == 2 and out["report"]["rejected"] == {"unavailable": 1}


def assert_tagposts_refused_before_any_work(run: Path, tmp_path: Path) -> None:
    task = TagPosts(model=str(run), source="posts", input=str(new_posts_file(tmp_path / "in")),
                    output=str(tmp_path / "out"), device="cpu")
    assert not luigi.build([task], local_scheduler=True, workers=1)
    out = tmp_path / "out"  # no work at all (the crawl's lock and identity record are taken before it runs)
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[1] not in
                  ("locks", "identity")) == []


def test_refusal_on_a_vgg_weights_file_of_another_checksum(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["image"], run)
    record = json.loads((run / FEATURISATION).read_text())
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"other weights")
    record["groups"]["vgg"].update(weights=str(weights), weights_sha256="ab" * 32)
    (run / FEATURISATION).write_text(json.dumps(record))
    with pytest.raises(FeaturisationError, match=rf"vgg: weights {re.escape(str(weights))} have sha256 "
                                                 rf"[0-9a-f]{{64}}, .*{'ab' * 32}"):
        Tagger.load(run, device="cpu")
    assert_tagposts_refused_before_any_work(run, tmp_path)


def test_vgg_weights_from_the_torch_cache_are_found_there_or_located(runs, tmp_path, monkeypatch):
    """A run whose VGG-16 grids came from a torchvision weights entry (in the torch cache): found there; moved out
    of the cache, refused naming the file and `locate vgg=PATH`; located, the same tags, the provenance still the
    entry's; a located file of other bytes refused by its sha256."""
    import torch
    import torchvision

    from pipeline.vgg import VGGConfig, VGGGridExtractor
    from pipeline.weights import cache_checkpoint_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    cached = cache_checkpoint_path(entry.url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), cached)
    run = tmp_path / "run"
    shutil.copytree(runs["image"], run)
    record = json.loads((run / FEATURISATION).read_text())
    recorded = record["groups"]["vgg"]
    settings = {k: recorded["meta"][k] for k in ("resize", "image_size", "precision")}
    attrs = VGGGridExtractor(VGGConfig(weights="IMAGENET1K_V1", device="cpu", **settings)).provenance()
    recorded.update(weights=attrs["vgg_weights"], weights_sha256=attrs["vgg_weights_sha256"],
                    meta=json.loads(attrs["vgg_meta"]))
    record["random_weights"] = any(g["random_weights"] for name, g in record["groups"].items() if name != "vgg")
    recorded["random_weights"] = False
    (run / FEATURISATION).write_text(json.dumps(record))
    assert recorded["weights"] == "VGG16_Weights.IMAGENET1K_V1"
    rows = [{"id": "p1", "text": "Such a lovely cup with friends this morning #CoffeeTime",
             "image": str(new_posts_file(tmp_path / "in").parent / "cup.jpg")}]
    with Tagger.load(run, device="cpu", ocr_workers=1) as found:
        expected = found.tag(rows)
        assert found.describe()["located"] == {}
    moved = tmp_path / "elsewhere" / "vgg16.pth"
    moved.parent.mkdir()
    cached.rename(moved)
    with pytest.raises(FeaturisationError, match=rf"vgg: .*'vgg16-397923af\.pth' not found; expected at "
                                                 rf"{re.escape(str(cached))}.*; if it moved, give its place: "
                                                 rf"locate vgg=PATH"):
        Tagger.load(run, device="cpu")
    with Tagger.load(run, device="cpu", ocr_workers=1, locate={"vgg": str(moved)}) as located:
        assert located.tag(rows) == expected
        assert located.describe()["located"] == {"vgg": str(moved)}
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    with pytest.raises(FeaturisationError, match=rf"vgg: weights {re.escape(str(other))} \(given: locate vgg="
                                                 rf".*\) have sha256 [0-9a-f]{{64}}, the training shards' features "
                                                 rf"came from sha256 {attrs['vgg_weights_sha256']}"):
        Tagger.load(run, device="cpu", locate={"vgg": str(other)})


def test_refusal_on_a_missing_attribute_predictor(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["image"], run)
    record = json.loads((run / FEATURISATION).read_text())
    record["groups"]["attributes"]["weights"] = str(tmp_path / "gone" / "predictor.pt")
    (run / FEATURISATION).write_text(json.dumps(record))
    with pytest.raises(FeaturisationError, match=r"attributes: attribute predictor: .*predictor\.pt.*expected at "
                                                 + re.escape(str((tmp_path / "gone" / "predictor.pt").resolve()))):
        Tagger.load(run, device="cpu")
    # A run without the record at all is refused too, naming the file.
    (run / FEATURISATION).unlink()
    with pytest.raises(FeaturisationError, match=re.escape(f"{run / FEATURISATION} is missing")):
        Tagger.load(run, device="cpu")


def test_api_on_one_post_and_a_batch(tagger, tmp_path):
    data = photo_bytes(TOPICS["CatLife"][0], 3, size=(80, 64))
    path = tmp_path / "cat.jpg"
    path.write_bytes(data)
    text = "The kitty is sleeping again this afternoon #CatLife"
    (one,) = tagger.tag([{"id": "p", "text": text, "image": str(path)}], top=3)
    assert one["id"] == "p" and len(one["keyphrases"]) == 3 and "vision" in one["modalities"]
    batch = tagger.tag([{"id": "bytes", "text": text, "image": data},
                        {"id": "pil", "text": text, "image": Image.open(io.BytesIO(data))},
                        "just some words about the stars tonight",
                        {"id": "p", "text": text, "image": str(path)}], top=3)
    assert [r["id"] for r in batch] == ["bytes", "pil", "2", "p"]
    # The same image as a path, bytes or a decoded PIL image, alone or in a batch: the same answer.
    assert batch[0]["keyphrases"] == batch[3]["keyphrases"]
    for other in (batch[0], batch[1]):       # batched with other posts: the same ranking, float noise apart
        assert [k["text"] for k in other["keyphrases"]] == [k["text"] for k in one["keyphrases"]]
        assert [k["score"] for k in other["keyphrases"]] == pytest.approx([k["score"] for k in one["keyphrases"]],
                                                                           abs=1e-5)
    assert batch[2]["modalities"] == ["text"] and "gold" not in batch[2]


def test_a_loaded_tagger_reads_no_weights_again_and_its_ocr_errors_surface(tagger, tmp_path, monkeypatch):
    """Loading costs once: tagging a post loads no checkpoint or weights (no torch.load). OCR reads in the
    background while the other extractors run; a worker's death there is the call's error, not an empty reading."""
    import torch

    from pipeline.ocr import OCRWorkerDied

    def refuse(*args, **kwargs):
        raise AssertionError("weights read again after loading")

    monkeypatch.setattr(torch, "load", refuse)
    path = tmp_path / "cup.jpg"
    path.write_bytes(photo_bytes(TOPICS["CoffeeTime"][0], 11, size=(80, 64)))
    (one,) = tagger.tag([{"id": "c", "text": "A lovely cup this morning", "image": str(path)}])
    assert "vision" in one["modalities"] and one["keyphrases"]

    def died(images):
        raise OCRWorkerDied("an OCR worker process died")

    monkeypatch.setattr(tagger.ocr_pool, "read", died)
    with pytest.raises(OCRWorkerDied):
        tagger.tag([{"id": "d", "text": "Another cup", "image": photo_bytes(TOPICS["CoffeeTime"][0], 12)}])


def test_tagging_featurises_a_post_exactly_as_the_training_shards(runs, tagger):
    """The training posts, tagged as new posts from the raw archive: the same tokens, OCR tokens, attribute
    words and VGG grid as their rows in the shards."""
    rows = {}
    for split in ("train", "valid", "test"):
        for path in sorted((runs["data"] / split).glob("shard-*.h5")):
            data = shards.read_shard(path)
            for i, post_id in enumerate(data["post_id"]):
                rows[post_id] = {k: data[k][i] for k in ("tokens", "keyphrases", "ocr_tokens", "attributes", "vgg")}
    posts = {t["id"]: {"id": t["id"], "text": t["text"], "entities": t["entities"],
                       "image": str(runs["archive"] / "media" / f"{key}.jpg")}
             for t, key, _ in topic_posts() if t["id"] in rows}
    assert len(posts) == 30
    prepared = [tagger.prepare(p) for p in posts.values()]
    tagger._features(prepared)
    for p in prepared:
        row = rows[p.id]
        assert " ".join(p.tokens) == row["tokens"] and ";".join(p.gold) == row["keyphrases"]
        assert " ".join(p.features["ocr"]) == row["ocr_tokens"]
        assert " ".join(p.features["attributes"]) == row["attributes"]
        # the same network on the same pixels; only the batch's make-up differs (float noise)
        np.testing.assert_allclose(p.features["vgg"][0].numpy().astype(np.float32), row["vgg"].astype(np.float32),
                                   rtol=1e-2, atol=1e-2)


def test_a_text_only_model_never_reads_the_images(runs, tmp_path):
    with Tagger.load(runs["text"], device="cpu") as text_tagger:
        assert text_tagger.groups == [] and text_tagger.ocr_pool is None
        (result,) = text_tagger.tag([{"id": "x", "text": "a cup in the cafe #CoffeeTime", "image": "nowhere.jpg"}])
        assert result["modalities"] == ["text"] and "image_rejected" not in result
        assert text_tagger.timings["decode"] == 0 and text_tagger.timings["vgg"] == 0


def test_cmkp_tag_on_standard_input_with_scores(runs, tmp_path):
    from model.cli import tag

    stdin = ("Such a lovely cup with friends this morning #CoffeeTime\n"
             + json.dumps({"id": "s2", "text": "the stars and the galaxy tonight #DeepSpace"}) + "\n"
             + "{broken\n")
    result = CliRunner().invoke(tag, ["--model", str(runs["text"]), "--top", "2", "--score",
                                                      "--device", "cpu"], input=stdin)
    assert result.exit_code == 0, result.output + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["1", "s2", "stdin.jsonl:3"]
    assert all(len(line["keyphrases"]) == 2 for line in lines[:2]) and lines[2]["rejected"] == "malformed_json"
    assert lines[0]["gold"] == ["coffee time"] and lines[1]["gold"] == ["deep space"]
    assert "3 posts read: 2 tagged, 1 rejected" in result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == score(lines[:2])


# ---- the default configuration: a keyphrase memory that compares sentence embeddings ----------------------------

def archive_posts(runs) -> dict[str, dict]:
    """The dataset's posts as new posts from the raw archive (text, entities, image), by id."""
    return {t["id"]: {"id": t["id"], "text": t["text"], "entities": t["entities"],
                      "image": str(runs["archive"] / "media" / f"{key}.jpg")} for t, key, _ in topic_posts()}


def test_hybrid_run_tags_its_dataset_as_cmkp_predict_ranks_it(runs, tmp_path):
    """The hybrid run's dataset tagged as new posts from the raw archive: each post's sentence embedding is its
    shard row's, and its ranking is the one cmkp-predict writes for that split."""
    from model.cli import predict

    archive = archive_posts(runs)
    with Tagger.load(runs["hybrid"], device="cpu", ocr_workers=1, batch_size=8) as hybrid:
        assert hybrid.groups == ["ocr", "attributes", "vgg", "text_embedding"]
        assert hybrid.describe()["groups"]["text_embedding"]["weights"] == str(runs["text_encoder"].resolve())
        compared = 0
        for split in ("train", "valid", "test"):
            (path,) = sorted((runs["data"] / split).glob("shard-*.h5"))
            rows = shards.read_shard(path)
            out = tmp_path / f"{split}.txt"
            result = CliRunner().invoke(predict, ["--model", str(runs["hybrid"] / "model.pt"), "--data",
                                                  str(runs["data"]), "--split", split, "--out", str(out),
                                                  "--device", "cpu"])
            assert result.exit_code == 0, result.output
            expected = [line.split(";") for line in out.read_text().splitlines()]
            prepared = [hybrid.prepare(archive[i]) for i in rows["post_id"]]
            hybrid._features(prepared)
            posts = [Post(p.id, p.tokens, p.features["ocr"], p.features["attributes"], [], True, 0, 0)
                     for p in prepared]
            np.testing.assert_allclose(hybrid._embed(posts).numpy(), rows["text_embedding"], atol=1e-5)
            results = hybrid.tag_prepared(prepared)
            assert [[k["text"] for k in r["keyphrases"]] for r in results] == expected
            compared += len(results)
        assert compared == 30
        assert hybrid.timings["text_embedding"] > 0


def test_hybrid_run_through_tagposts_and_cmkp_tag(runs, tmp_path):
    from model.cli import tag

    posts_file = new_posts_file(tmp_path / "in")
    out = tag_posts(runs, "posts", posts_file, tmp_path / "out", run="hybrid")
    assert out["report"]["tagged"] == 5 and out["report"]["rejected"] == {"malformed_json": 1}
    assert "text_embedding" in out["report"]["tagger"]["groups"]
    with Tagger.load(runs["hybrid"], device="cpu", ocr_workers=1) as hybrid:
        rows = [json.loads(line) for line in posts_file.read_text().splitlines()[:5]]
        for row in rows:
            row["image"] = str(posts_file.parent / row["image"]) if "image" in row else None
        alone = hybrid.tag(rows)
    for result in alone:
        line = out["lines"][result["id"]]
        assert [k["text"] for k in line["keyphrases"]] == [k["text"] for k in result["keyphrases"]]
        assert [k["score"] for k in line["keyphrases"]] == pytest.approx([k["score"] for k in result["keyphrases"]],
                                                                          abs=1e-5)
    assert out["lines"]["n1"]["keyphrases"] == out["lines"]["n2"]["keyphrases"]
    stdin = "".join(json.dumps({k: v for k, v in row.items() if k != "image"}) + "\n" for row in rows)
    result = CliRunner().invoke(tag, ["--model", str(runs["hybrid"]), "--device", "cpu", "--ocr-workers", "1"],
                                input=stdin)
    assert result.exit_code == 0, result.output + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    with Tagger.load(runs["hybrid"], device="cpu", ocr_workers=1) as hybrid:
        assert lines == hybrid.tag([{k: v for k, v in row.items() if k != "image"} for row in rows])


def hybrid_copy(runs, tmp_path, change) -> Path:
    """A copy of the hybrid run whose featurisation record's text_embedding entry `change` edits."""
    run = tmp_path / "run"
    shutil.copytree(runs["hybrid"], run)
    record = json.loads((run / FEATURISATION).read_text())
    change(record["groups"]["text_embedding"], record)
    (run / FEATURISATION).write_text(json.dumps(record))
    return run


def test_refusal_on_another_or_a_missing_sentence_encoder(runs, tmp_path):
    weights = runs["text_encoder"].resolve() / "model.safetensors"
    run = hybrid_copy(runs, tmp_path / "sha", lambda entry, _: entry.update(weights_sha256="cd" * 32))
    with pytest.raises(FeaturisationError, match=rf"text_embedding: weights {re.escape(str(weights))} have sha256 "
                                                 rf"[0-9a-f]{{64}}, .*{'cd' * 32}"):
        Tagger.load(run, device="cpu")
    assert_tagposts_refused_before_any_work(run, tmp_path)
    gone = tmp_path / "gone" / "tiny-bert"
    run = hybrid_copy(runs, tmp_path / "gone-run", lambda entry, _: entry.update(weights=str(gone)))
    with pytest.raises(FeaturisationError, match=r"text_embedding: sentence encoder .*expected at "
                                                 + re.escape(str(gone / "model.safetensors"))):
        Tagger.load(run, device="cpu")
    run = hybrid_copy(runs, tmp_path / "hub", lambda entry, _: entry.update(weights="no-such-org/no-such-model"))
    with pytest.raises(FeaturisationError, match=r"text_embedding: .*'no-such-org/no-such-model': not a directory"):
        Tagger.load(run, device="cpu")
    # The same files, pooled otherwise: refused once the encoder is built, before any post is read.
    run = hybrid_copy(runs, tmp_path / "pool",
                      lambda entry, _: entry.update(meta={**entry["meta"], "pooling": "cls"}))
    with pytest.raises(FeaturisationError, match=r"text_embedding: the encoder this run builds differs .*'pooling': "
                                                 r"'mean'.*'pooling': 'cls'"):
        Tagger.load(run, device="cpu")
    # A record that does not say which encoder embedded the training posts.
    run = hybrid_copy(runs, tmp_path / "old", lambda _, record: record["groups"].pop("text_embedding"))
    with pytest.raises(FeaturisationError, match="does not record which encoder made them"):
        Tagger.load(run, device="cpu")
    # A checkpoint whose keyphrase memory was embedded by another encoder than its featurisation record names.
    import torch

    run = hybrid_copy(runs, tmp_path / "memory", lambda entry, record: None)
    checkpoint = torch.load(run / "model.pt", weights_only=True)
    checkpoint["state_dict"]["memory._extra_state"]["embedding_provenance"]["sha256"] = "ef" * 32
    checkpoint["config"]["memory_embedding_weight"] = 0.5      # whatever DEV chose: the memory compares them
    torch.save(checkpoint, run / "model.pt")
    with pytest.raises(FeaturisationError, match=r"text_embedding: .*model\.pt, new posts: .* not comparable"):
        Tagger.load(run, device="cpu")


# ---- a run directory moved elsewhere -----------------------------------------------------------------------------

def test_a_moved_run_tags_identically_with_what_it_points_to_located(runs, tmp_path):
    """The default configuration's run copied elsewhere, the original gone, and what it points to outside itself
    (the dataset's attribute predictor, the sentence encoder's directory) moved: refused naming each and where it
    was expected; with them located, the same tags to the byte (API, TagPosts, cmkp-tag); a located file of
    another checksum, or an encoder other than the recorded one, refused by name."""
    from model.cli import tag

    posts_file = new_posts_file(tmp_path / "in")
    rows = [json.loads(line) for line in posts_file.read_text().splitlines()[:5]]
    for row in rows:
        row["image"] = str(posts_file.parent / row["image"]) if "image" in row else None
    with Tagger.load(runs["hybrid"], device="cpu", ocr_workers=1) as original:
        expected = original.tag(rows)
    expected_lines = tag_posts(runs, "posts", posts_file, tmp_path / "out-original", run="hybrid")["lines"]
    predictor = (runs["data"] / "work" / "attributes" / "predictor.pt").resolve()
    encoder = runs["text_encoder"].resolve()
    moved = tmp_path / "elsewhere"
    shutil.copytree(runs["hybrid"], moved / "run")
    places = {runs["hybrid"]: tmp_path / "run-renamed", runs["data"]: moved / "data",
              runs["text_encoder"]: moved / "encoder"}
    for old, new in places.items():
        old.rename(new)
    try:
        run = moved / "run"
        with pytest.raises(FeaturisationError) as refused:
            Tagger.load(run, device="cpu")
        assert re.search(rf"attributes: .*expected at {re.escape(str(predictor))}.*locate attributes=PATH",
                         str(refused.value))
        assert re.search(rf"text_embedding: .*expected at {re.escape(str(encoder / 'model.safetensors'))}.*"
                         rf"locate text_embedding=PATH", str(refused.value))
        locate = {"attributes": str(moved / "data" / "work" / "attributes" / "predictor.pt"),
                  "text_embedding": str(moved / "encoder")}
        with Tagger.load(run, device="cpu", ocr_workers=1, locate=locate) as relocated:
            assert relocated.tag(rows) == expected
            assert relocated.describe()["located"] == locate
        lines = tag_posts({"moved": run}, "posts", posts_file, tmp_path / "out-moved", run="moved",
                          locate=locate)["lines"]
        assert lines == expected_lines
        assert (tmp_path / "out-moved" / "tags.jsonl").read_bytes() == \
            (tmp_path / "out-original" / "tags.jsonl").read_bytes()
        stdin = "".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows)
        result = CliRunner().invoke(tag, ["--model", str(run), "--device", "cpu", "--ocr-workers", "1",
                                          *(f"--locate={k}={v}" for k, v in locate.items())], input=stdin)
        assert result.exit_code == 0, result.output + result.stderr
        assert [json.loads(line) for line in result.stdout.splitlines()] == expected
        # Located files are checked as if found where recorded: another predictor's bytes, another encoder.
        other = tmp_path / "other-predictor.pt"
        other.write_bytes(Path(locate["attributes"]).read_bytes() + b"\0")
        with pytest.raises(FeaturisationError, match=rf"attributes: weights {re.escape(str(other))} \(given: locate "
                                                     rf"attributes=.*\) have sha256 [0-9a-f]{{64}}, the training "
                                                     rf"shards' features came from sha256 [0-9a-f]{{64}} "
                                                     rf"\({re.escape(str(predictor))}\)"):
            Tagger.load(run, device="cpu", locate={**locate, "attributes": str(other)})
        task = TagPosts(model=str(run), source="posts", input=str(posts_file), output=str(tmp_path / "refused"),
                        device="cpu", locate={**locate, "attributes": str(other)})
        assert not luigi.build([task], local_scheduler=True, workers=1)
        assert not (tmp_path / "refused" / "tags.jsonl").exists()
        other_encoder = tmp_path / "other-encoder"
        shutil.copytree(moved / "encoder", other_encoder)
        with open(other_encoder / "model.safetensors", "ab") as f:
            f.write(b" ")
        with pytest.raises(FeaturisationError, match=rf"text_embedding: weights .*other-encoder/model.safetensors "
                                                     rf".*came from sha256 [0-9a-f]{{64}} "
                                                     rf"\({re.escape(str(encoder))}\)"):
            Tagger.load(run, device="cpu", locate={**locate, "text_embedding": str(other_encoder)})
        # The same weights pooled otherwise: refused once the encoder is built, naming the pooling.
        shutil.copyfile(moved / "encoder" / "model.safetensors", other_encoder / "model.safetensors")
        pooling = json.loads((other_encoder / "1_Pooling" / "config.json").read_text())
        pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
        (other_encoder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        with pytest.raises(FeaturisationError, match=rf"text_embedding: the encoder this run builds differs .*"
                                                     rf"'pooling': 'cls'.* not comparable with those of "
                                                     rf"{re.escape(str(encoder))} .*'pooling': 'mean'"):
            Tagger.load(run, device="cpu", locate={**locate, "text_embedding": str(other_encoder)})
        # the run's VGG-16 weights are seeded random: nothing to place
        with pytest.raises(FeaturisationError, match=r"locate vgg: not something this run points to .*"
                                                     r"attributes, ocr, text_embedding"):
            Tagger.load(run, device="cpu", locate={**locate, "vgg": str(other)})
    finally:
        for old, new in places.items():
            new.rename(old)


def test_segmenter_files_a_run_points_to_are_located_by_name(runs, tmp_path):
    """The hashtag segmenter's extra statistics files are pointed to by path and sha256, and located by name."""
    from model.checkpoint import config_from_dict, load as load_record
    from model.provenance import check_featurisation
    from pipeline.shards import sha256_file

    counts = tmp_path / "counts.txt"
    counts.write_text("coffee time with friends\n")
    run = hybrid_copy(runs, tmp_path, lambda _, record: record["text"].update(segmenter_stats_from=[
        {"path": str(tmp_path / "gone" / "counts.txt"), "sha256": sha256_file(counts)}]))
    config = config_from_dict(load_record(run / "model.pt")["config"], str(run))
    with pytest.raises(FeaturisationError, match=r"segmenter_stats_from\): .*gone/counts.txt is missing; .*locate "
                                                 r"segmenter:counts.txt=PATH"):
        check_featurisation(run, config)
    found = check_featurisation(run, config, {"segmenter:counts.txt": counts})
    assert found.segmenter_files("segmenter_stats_from") == [str(counts.resolve())]
    counts.write_text("another corpus\n")
    with pytest.raises(FeaturisationError, match=rf"{re.escape(str(counts.resolve()))} \(given: locate "
                                                 rf"segmenter:counts.txt=.*\) has sha256 [0-9a-f]{{64}}, training"):
        check_featurisation(run, config, {"segmenter:counts.txt": counts})


# ---- seed ensembles ---------------------------------------------------------------------------------------------

def reweighted_copy(runs, tmp_path, scale: float) -> Path:
    """A member of the hybrid run's configuration that ranks otherwise: the same checkpoint with its learned
    ranking's weights scaled (fields DEV chooses per run, as it does per seed), which flattens or sharpens its
    scores."""
    import torch

    run = tmp_path / "reweighted"
    shutil.copytree(runs["hybrid"], run)
    checkpoint = torch.load(run / "model.pt", weights_only=True)
    config = checkpoint["config"]
    config["rank_feature_weights"] = [w * scale for w in config["rank_feature_weights"]]
    torch.save(checkpoint, run / "model.pt")
    return run


def test_an_ensemble_of_one_run_is_that_run_and_members_scores_are_averaged(runs, tmp_path):
    from model.cli import tag

    posts = [{"id": "a", "text": "Such a lovely cup with friends this morning #CoffeeTime"},
             {"id": "b", "text": "the stars and the galaxy through the telescope tonight"},
             {"id": "c", "text": "a kitty having a nap on the sofa #CatLife"}]
    with Tagger.load(runs["hybrid"], device="cpu") as alone, Tagger.load([runs["hybrid"]], device="cpu") as one, \
            Tagger.load([runs["hybrid"]] * 2, device="cpu") as twice:
        expected = alone.tag(posts, top=1000)
        assert one.tag(posts, top=1000) == expected and twice.tag(posts, top=1000) == expected
        assert "ensemble" not in one.describe() and twice.describe()["ensemble"] == [str(runs["hybrid"])] * 2
    other = reweighted_copy(runs, tmp_path, scale=0.1)
    with Tagger.load(other, device="cpu") as member, Tagger.load([runs["hybrid"], other], device="cpu") as both:
        second = member.tag(posts, top=1000)
        assert second != expected
        for ours, first, last in zip(both.tag(posts, top=1000), expected, second):
            a = {k["text"]: k["score"] for k in first["keyphrases"]}
            b = {k["text"]: k["score"] for k in last["keyphrases"]}
            mean = {kp: (a.get(kp, 0.0) + b.get(kp, 0.0)) / 2 for kp in a | b}
            assert {k["text"]: k["score"] for k in ours["keyphrases"]} == pytest.approx(mean, abs=2e-6)
            scores = [k["score"] for k in ours["keyphrases"]]
            assert scores == sorted(scores, reverse=True)
    # cmkp-tag --model A --model A, and TagPosts with a JSON list of runs: the run's own answers
    stdin = "".join(json.dumps(p) + "\n" for p in posts)
    outputs = [CliRunner().invoke(tag, [*models, "--device", "cpu", "--top", "3"], input=stdin)
               for models in (["--model", str(runs["hybrid"])], ["--model", str(runs["hybrid"])] * 2)]
    assert all(o.exit_code == 0 for o in outputs) and outputs[0].stdout == outputs[1].stdout
    assert "an ensemble of 2 runs" in outputs[1].stderr
    posts_file = new_posts_file(tmp_path / "in")
    single = tag_posts(runs, "posts", posts_file, tmp_path / "single", run="hybrid")
    runs_list = {**runs, "pair": json.dumps([str(runs["hybrid"])] * 2)}
    pair = tag_posts(runs_list, "posts", posts_file, tmp_path / "pair", run="pair")
    assert pair["lines"] == single["lines"] and pair["report"]["tagger"]["ensemble"] == [str(runs["hybrid"])] * 2


def test_ensemble_members_must_featurise_one_way_and_be_one_configuration(runs, tmp_path):
    other = hybrid_copy(runs, tmp_path, lambda _, record: record["image_checks"].update(max_pixels=1000))
    with pytest.raises(FeaturisationError, match=r"featurisation\.json differs from .* in \['image_checks'\]"):
        Tagger.load([runs["hybrid"], other], device="cpu")
    import torch

    other = tmp_path / "memory-k"
    shutil.copytree(runs["hybrid"], other)
    checkpoint = torch.load(other / "model.pt", weights_only=True)
    checkpoint["config"]["memory_k"] = 5
    torch.save(checkpoint, other / "model.pt")
    with pytest.raises(ValueError, match=r"differs from .* in config fields \['memory_k'\]"):
        Tagger.load([runs["hybrid"], other], device="cpu")
