"""Every filter with its rejection reason, and reconciled counts, on the tests' own tiny archive."""
from __future__ import annotations

import json

import luigi
import pytest

from pipeline import shards
from pipeline.tasks import BuildDataset
from pipeline.text_tasks import DedupeImages
from text_archive_fixture import EXPECTED_REJECTS, KEPT_IDS, write_archive


@pytest.fixture
def small_config(set_luigi_config):
    """Hashtags need 2 posts (not 10): the fixture is tiny."""
    set_luigi_config({"FilterHashtags": {"min_hashtag_count": 2}})


def test_archive_chain_rejects_each_case_with_its_reason(tmp_path, small_config):
    archive = write_archive(tmp_path / "archive")
    out = tmp_path / "out"
    # The text half alone (features=[]): the image stages have their own tests.
    task = BuildDataset(source="archive", input=str(archive), output=str(out), features=[])
    result = luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING", detailed_summary=True)
    assert result.status == luigi.LuigiStatusCode.SUCCESS

    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["crawl", "filter", "images", "dedupe", "tokenize", "hashtags"]
    previous_kept = None
    for stage, counts in report["stages"].items():
        assert counts["rejected"] == dict(sorted(EXPECTED_REJECTS[stage].items())), stage
        assert counts["read"] == counts["kept"] + sum(counts["rejected"].values())
        if previous_kept is not None:
            assert counts["read"] == previous_kept  # nothing lost between stages
        previous_kept = counts["kept"]
    assert report["stages"]["crawl"]["read"] == 20  # 18 tweets + a malformed line + a repeated tweet
    assert report["stages"]["hashtags"]["kept"] == len(KEPT_IDS)

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["reason"] for r in rejects}
    assert by_id["3"] == "retweet" and by_id["9"] == "duplicate_text" and by_id["11"] == "not_jpeg"
    assert by_id["14"] == "duplicate_image" and by_id["15"] == "near_duplicate_image"
    assert by_id["16"] == "too_few_tokens" and by_id["17"] == "rare_hashtags_only"
    assert by_id["a.jsonl:2"] == "malformed_json"
    assert len(rejects) == sum(sum(v.values()) for v in EXPECTED_REJECTS.values())

    kept = {}
    for split in ("train", "valid", "test"):
        for path in sorted((out / split).glob("shard-*.h5")):
            data = shards.read_shard(path)
            for i, post_id in enumerate(data["post_id"]):
                kept[post_id] = {k: v[i] for k, v in data.items()}
    assert sorted(kept) == sorted(KEPT_IDS)
    first = kept["1"]
    assert first["tokens"] == "loving the game tonight with friends"  # trailing hashtag removed
    assert first["keyphrases"] == "super bowl" and first["hashtags"] == "SuperBowl"
    assert kept["2"]["keyphrases"] == "super bowl;nfl"
    assert first["image_present"] and first["image_size"].tolist() == [64, 48]
    assert first["image_url"] == "https://pbs.twimg.com/media/m1.jpg"
    stored = out / first["image_path"]
    assert stored.parent.name == first["image_sha256"][:2] and stored.name == first["image_sha256"] + ".jpg"
    assert shards.sha256_file(stored) == first["image_sha256"]
    assert kept["18"]["image_present"]  # the CMYK JPEG, converted
    # Only images that passed validation are stored, once per content: posts 1, 2, 15, 16, 17, 18 (post 14's
    # bytes are post 1's; posts 10-13 failed validation; the filter stage's rejects were never fetched).
    assert len(list((out / "images").rglob("*.jpg"))) == 6


def test_stages_report_progress(tmp_path, monkeypatch):
    """Every stage reports its share done as it goes (here at every record) and its counts at the end."""
    from pipeline import text_tasks

    monkeypatch.setattr(text_tasks, "PROGRESS_SECONDS", 0.0)
    reports: dict[str, list] = {}
    stages = {"CrawlTweets": "crawl", "FilterPosts": "filter", "FetchImages": "images", "DedupeImages": "dedupe"}

    def recorder(name):
        original = getattr(luigi.scheduler.Scheduler, name)

        def record(scheduler, task_id, value):
            reports.setdefault(stages[task_id.split("_")[0]], []).append(value)
            return original(scheduler, task_id, value)
        return record

    for name in ("set_task_progress_percentage", "set_task_status_message"):
        monkeypatch.setattr(luigi.scheduler.Scheduler, name, recorder(name))
    archive = write_archive(tmp_path / "archive")
    task = text_tasks.DedupeImages(source="archive", input_path=str(archive), dataset_dir=str(tmp_path / "out"))
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    assert list(reports) == ["crawl", "filter", "images", "dedupe"]
    # The archive holds 20 lines; the filter reads the crawl's 18 posts and keeps 11 for the image stage.
    assert reports["crawl"][:2] == ["crawl: read 1, kept 1", "crawl: read 2, kept 2"]
    assert reports["crawl"][-2:] == ["crawl: read 20, kept 18, rejected {'malformed_json': 1, 'duplicate_id': 1}",
                                     100]
    filter_percentages = [p for p in reports["filter"] if isinstance(p, int)]
    assert filter_percentages == [int(100 * i / 18) for i in range(18)] + [100]
    assert "images: 10 of 11 posts" in reports["images"]
    assert reports["dedupe"][-1] == 100


def test_a_post_lost_between_stages_fails_the_stage(tmp_path, monkeypatch):
    """A stage that drops a post without a rejection breaks the reconciliation: it fails, writing nothing."""
    from pipeline import clean

    real = clean.dedupe_images

    def losing(records, log, max_distance):
        records = list(records)
        return real(records[1:], log, max_distance)  # the first post vanishes without a reason

    monkeypatch.setattr(clean, "dedupe_images", losing)
    archive = write_archive(tmp_path / "archive")
    task = DedupeImages(source="archive", input_path=str(archive), dataset_dir=str(tmp_path / "out"))
    assert not luigi.build([task], local_scheduler=True, workers=1, log_level="CRITICAL")
    assert (tmp_path / "out" / "work" / "images").is_dir() and not (tmp_path / "out" / "work" / "dedupe").exists()
