"""Source readers: twarc2 pages and flattened tweets, media lookup by key, the CMKP release reader."""
from __future__ import annotations

import json

import pytest

from pipeline.report import StageLog
from pipeline.sources.archive import read_archive
from pipeline.sources.cmkp import read_release
from text_archive_fixture import tweet


def test_archive_reads_pages_and_flattened_tweets(tmp_path):
    page_tweet = tweet(1, "From a page #tag", ["k1"])
    flat = tweet(2, "Flattened #tag", [])
    flat["attachments"] = {"media_keys": ["k2"], "media": [{"media_key": "k2", "type": "photo", "url": "u2"}]}
    retweet = tweet(3, "RT @a: retweeted #tag", ["k1"], retweet=True)
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "k1.png").write_bytes(b"x")  # looked up by key, whatever the extension
    with open(tmp_path / "x.jsonl", "w") as f:
        f.write(json.dumps({"data": [page_tweet, retweet],
                            "includes": {"media": [{"media_key": "k1", "type": "photo", "url": "u1"}]}}) + "\n")
        f.write("\n")  # blank lines are not records
        f.write(json.dumps(flat) + "\n")
        f.write(json.dumps({"meta": {"result_count": 0}}) + "\n")
        f.write("{broken\n")
    log = StageLog("crawl")
    records = list(read_archive(tmp_path, log))
    assert [r["id"] for r in records] == ["1", "3", "2"]
    assert records[0]["media"] == [{"media_key": "k1", "type": "photo", "url": "u1",
                                    "file": str(tmp_path / "media" / "k1.png")}]
    assert records[2]["media"] == [{"media_key": "k2", "type": "photo", "url": "u2", "file": ""}]
    assert records[1]["is_retweet"] and not records[0]["is_retweet"]
    assert records[0]["entities"]["hashtags"] == [{"start": 12, "end": 16, "tag": "tag"}]
    assert log.counts() == {"read": 5, "kept": 3, "rejected": {"malformed_json": 1, "unrecognized_line": 1}}
    assert [r["id"] for r in log.rejects] == ["x.jsonl:4", "x.jsonl:5"]


def test_archive_without_jsonl_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl"):
        list(read_archive(tmp_path, StageLog("crawl")))


def test_cmkp_reader(tmp_path):
    (tmp_path / "test_src.txt").write_text("a b c<sep>kp one ; two<sep>http://x/1.jpg\r\n<sep>k<sep>u\n",
                                           encoding="utf-8")
    (tmp_path / "test_ocr_final.txt").write_text("some words\n\n")
    log = StageLog("crawl")
    records = list(read_release(tmp_path, log))
    assert records == [{"id": "cmkp-test-0", "split": "test", "text": "a b c", "tokens": "a b c",
                        "keyphrases": ["kp one", "two"], "hashtags": [], "image_url": "http://x/1.jpg",
                        "ocr_raw": "", "ocr_tokens": "some words"}]
    assert log.counts() == {"read": 2, "kept": 1, "rejected": {"empty_text": 1}}
    with pytest.raises(FileNotFoundError, match="no CMKP release file"):
        list(read_release(tmp_path / "nothing", StageLog("crawl")))
