"""Hostile and corrupt records in every source: each is rejected with its own reason, the good records beside
it are kept, and `read == kept + rejected`. Among them the archive that used to stop `CrawlTweets` with
`TypeError: unhashable type: 'list'` (a list inside `attachments.media_keys`)."""
from __future__ import annotations

import copy
import json
import tracemalloc

import luigi
import pytest

from pipeline.report import StageLog
from pipeline.sources import records
from pipeline.sources.archive import read_archive
from pipeline.sources.cmkp import read_release
from pipeline.text_tasks import CrawlTweets, read_jsonl
from text_archive_fixture import tweet


def good(tid: int) -> dict:
    return tweet(tid, f"Post {tid} about the game #SuperBowl", [f"k{tid}"])


def broken(tid: int, change) -> dict:
    t = copy.deepcopy(good(tid))
    change(t)
    return t


# (what is wrong, the tweet, the reason it is rejected with)
BAD_TWEETS = [
    ("text null", broken(101, lambda t: t.update(text=None)), "wrong_type"),
    ("text a number", broken(102, lambda t: t.update(text=5)), "wrong_type"),
    ("text missing", broken(103, lambda t: t.pop("text")), "missing_field"),
    ("id an object", broken(104, lambda t: t.update(id={"$numberLong": "104"})), "wrong_type"),
    ("entities not an object", broken(105, lambda t: t.update(entities=["#SuperBowl"])), "wrong_type"),
    ("attachments not an object", broken(106, lambda t: t.update(attachments="k106")), "wrong_type"),
    ("hashtag without offsets", broken(107, lambda t: t["entities"]["hashtags"][0].pop("start")), "missing_field"),
    ("hashtag with string offsets", broken(108, lambda t: t["entities"]["hashtags"][0].update(start="22")),
     "wrong_type"),
    ("nested list as media key", broken(109, lambda t: t["attachments"].update(media_keys=[["k109"]])),
     "wrong_type"),
    ("referenced_tweets holding strings", broken(110, lambda t: t.update(referenced_tweets=["retweeted"])),
     "wrong_type"),
    ("lone surrogate in text", broken(111, lambda t: t.update(text="Half a pair \ud83d #SuperBowl")),
     "lone_surrogate"),
    ("NUL in text", broken(112, lambda t: t.update(text="A NUL \x00 here #SuperBowl")), "nul_character"),
    ("lone surrogate in an entity's key", broken(113, lambda t: t["entities"]["hashtags"][0].update({"\udc80": 1})),
     "lone_surrogate"),
]

# (what is wrong, the raw line, the reason)
BAD_LINES = [
    ("5,000-digit number", '{"id": "201", "text": "x", "n": ' + "9" * 5000 + "}", "number_too_long"),
    ("100,000 levels of nesting", '{"id": "202", "text": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "json_too_deep"),
    ("a top-level array", json.dumps([good(203)]), "not_an_object"),
    ("NaN", '{"id": "204", "text": "x", "n": NaN}', "malformed_json"),
    ("not JSON", '{"id": "205", "text": ', "malformed_json"),
    ("neither page nor tweet", '{"meta": {"result_count": 0}}', "unrecognized_line"),
]
INVALID_UTF8 = b'{"id": "301", "text": "caf\xe9 #SuperBowl"}\n'  # Latin-1, not UTF-8


def write_archive(directory, lines: list[bytes]):
    directory.mkdir(exist_ok=True)
    (directory / "a.jsonl").write_bytes(b"".join(lines))
    return directory


def test_each_bad_tweet_and_line_is_rejected_with_its_reason_and_the_rest_kept(tmp_path):
    lines = [json.dumps(good(1)).encode() + b"\n"]
    # Each bad tweet in a page of its own (a flattened tweet without `text` is not recognisable as a tweet).
    lines += [json.dumps({"data": [t]}).encode("utf-8", "surrogatepass") + b"\n" for _, t, _ in BAD_TWEETS]
    lines += [line.encode() + b"\n" for _, line, _ in BAD_LINES]
    lines += [INVALID_UTF8, json.dumps(good(2)).encode() + b"\n"]
    log = StageLog("crawl")
    kept = list(read_archive(write_archive(tmp_path / "archive", lines), log))
    assert [r["id"] for r in kept] == ["1", "2"]
    reasons = [(r["id"], r["reason"]) for r in log.rejects]
    expected = [(t["id"] if isinstance(t["id"], str) else f"a.jsonl:{n}#0", reason)
                for n, (_, t, reason) in enumerate(BAD_TWEETS, 2)]
    expected += [(f"a.jsonl:{n}", reason) for n, (_, _, reason) in enumerate(BAD_LINES, 2 + len(BAD_TWEETS))]
    expected += [(f"a.jsonl:{2 + len(BAD_TWEETS) + len(BAD_LINES)}", "invalid_utf8")]
    assert reasons == expected
    log.save(tmp_path)  # every detail is writable as UTF-8
    counts = log.counts()  # raises unless read == kept + rejected
    assert counts["read"] == 2 + len(BAD_TWEETS) + len(BAD_LINES) + 1 and counts["kept"] == 2
    details = {r["id"]: r["detail"] for r in log.rejects}
    assert details["101"].startswith("tweet.text is null, expected a string")
    assert details["107"].startswith("tweet.entities.hashtags[0].start is missing")
    assert details["109"].startswith("tweet.attachments.media_keys[0] is an array, expected a string")


def test_page_level_faults_reject_only_the_tweets_they_touch(tmp_path):
    with_media, without_media = good(1), tweet(2, "No photo here #SuperBowl")
    page = {"data": [with_media, "a string, not a tweet", without_media],
            "includes": {"media": ["k1"]}}  # includes.media holding a string: k1 cannot be looked up
    log = StageLog("crawl")
    kept = list(read_archive(write_archive(tmp_path / "archive", [json.dumps(page).encode() + b"\n"]), log))
    assert [r["id"] for r in kept] == ["2"]
    assert [(r["id"], r["reason"]) for r in log.rejects] == [("1", "wrong_type"), ("a.jsonl:1#1", "wrong_type")]
    assert "includes.media[0] is a string" in log.rejects[0]["detail"]
    assert log.counts() == {"read": 3, "kept": 1, "rejected": {"wrong_type": 2}}


def test_duplicate_ids_across_pages_and_files(tmp_path):
    directory = tmp_path / "archive"
    directory.mkdir()
    (directory / "a.jsonl").write_text(json.dumps({"data": [good(1), good(2)]}) + "\n"
                                       + json.dumps({"data": [good(2), good(3)]}) + "\n")
    (directory / "b.jsonl").write_text(json.dumps(good(3)) + "\n" + json.dumps(good(4)) + "\n")
    log = StageLog("crawl")
    assert [r["id"] for r in read_archive(directory, log)] == ["1", "2", "3", "4"]
    assert [(r["id"], r["reason"], r["detail"]) for r in log.rejects] == [
        ("2", "duplicate_id", "seen before (a.jsonl:2)"), ("3", "duplicate_id", "seen before (b.jsonl:1)")]
    assert log.counts() == {"read": 6, "kept": 4, "rejected": {"duplicate_id": 2}}


def test_a_line_of_hundreds_of_mb_is_rejected_with_memory_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1 << 20)
    directory = tmp_path / "archive"
    directory.mkdir()
    huge = 300 * (1 << 20)
    with open(directory / "a.jsonl", "wb") as f:
        f.write(json.dumps(good(1)).encode() + b"\n")
        f.seek(huge, 1)  # 300 MB of NUL bytes (a sparse file: nothing is written to disk), then its newline
        f.write(b"\n" + json.dumps(good(2)).encode() + b"\n")
    log = StageLog("crawl")
    tracemalloc.start()
    try:
        kept = [r["id"] for r in read_archive(directory, log)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kept == ["1", "2"]
    assert [(r["id"], r["reason"]) for r in log.rejects] == [("a.jsonl:2", "line_too_long")]
    assert log.rejects[0]["detail"] == f"{huge + 1} bytes > {1 << 20}"
    assert peak < 8 * (1 << 20), f"reading a 300 MB line peaked at {peak} bytes"


def test_the_archive_that_stopped_the_crawl_now_builds_its_stage(tmp_path):
    """The report's archive: a few malformed tweets among good ones. CrawlTweets completes, each malformed
    tweet is in rejects.jsonl with its reason, and the counts reconcile."""
    lines = [json.dumps(t).encode() + b"\n" for t in (good(1), BAD_TWEETS[8][1], good(2), BAD_TWEETS[0][1])]
    archive = write_archive(tmp_path / "archive", lines)
    task = CrawlTweets(source="archive", input_path=str(archive), dataset_dir=str(tmp_path / "out"))
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    stage = tmp_path / "out" / "work" / "crawl"
    assert [r["id"] for r in read_jsonl(stage / "posts.jsonl")] == ["1", "2"]
    assert json.loads((stage / "counts.json").read_text()) == {"read": 4, "kept": 2, "rejected": {"wrong_type": 2}}
    assert [(r["id"], r["reason"]) for r in read_jsonl(stage / "rejects.jsonl")] == [("109", "wrong_type"),
                                                                                     ("101", "wrong_type")]


def test_cmkp_release_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    src = [b"good post one<sep>kp a<sep>http://x/0.jpg\n",
           b"caf\xe9 latin-1<sep>kp<sep>u\n",  # invalid UTF-8
           b"long " + b"x" * 2000 + b"<sep>kp<sep>u\n",  # over the line cap
           b"a NUL \x00 inside<sep>kp<sep>u\n",
           b"good post two<sep>kp b<sep>http://x/4.jpg\n",
           b"good post three<sep>kp c<sep>http://x/5.jpg\n"]
    ocr = [b"ocr zero\n", b"\n", b"\n", b"\n", b"\n", b"bad \xff ocr\n"]  # the OCR of line 5 is not UTF-8
    (tmp_path / "test_src.txt").write_bytes(b"".join(src))
    (tmp_path / "test_ocr.txt").write_bytes(b"".join(ocr))
    log = StageLog("crawl")
    kept = list(read_release(tmp_path, log))
    assert [r["id"] for r in kept] == ["cmkp-test-0", "cmkp-test-4"]
    assert [(r["id"], r["reason"]) for r in log.rejects] == [
        ("cmkp-test-1", "invalid_utf8"), ("cmkp-test-2", "line_too_long"), ("cmkp-test-3", "nul_character"),
        ("cmkp-test-5", "invalid_utf8")]
    assert log.rejects[3]["detail"].startswith("test_ocr.txt line 6: ")
    assert log.counts() == {"read": 6, "kept": 2,
                            "rejected": {"invalid_utf8": 2, "line_too_long": 1, "nul_character": 1}}


@pytest.mark.parametrize("text, reason", [("9" * 101, "number_too_long"), ("1e400", "number_too_long"),
                                          ("[" * 5000 + "]" * 5000, "json_too_deep"), ("Infinity", "malformed_json"),
                                          ("{", "malformed_json")])
def test_parse_json_refusals(text, reason):
    with pytest.raises(records.BadRecord) as err:
        records.parse_json(text)
    assert err.value.reason == reason
    assert records.parse_json("9" * 100) == int("9" * 100)  # long, but within the cap


def test_an_id_file_with_bad_and_repeated_lines(tmp_path):
    from pipeline.sources.api import read_ids

    path = tmp_path / "ids.txt"
    path.write_bytes(b"# ids\n1\n12a\n2  # a comment\n1\n\xff\xfe\n" + b"9" * 30 + b"\n3\n")
    log = StageLog("crawl")
    assert read_ids(path, log) == ["1", "2", "3"]
    assert [(r["id"], r["reason"]) for r in log.rejects] == [
        ("ids.txt:3", "not_an_id"), ("1", "duplicate_id"), ("ids.txt:6", "invalid_utf8"), ("ids.txt:7", "not_an_id")]


def test_posts_files_jsonl_and_csv(tmp_path):
    from pipeline.sources.posts import read_posts

    (tmp_path / "a.jsonl").write_bytes(b"".join([
        b'{"id": "p1", "text": "a good post"}\n',
        b'{"id": {"n": 2}, "text": "id an object"}\n',
        b'{"id": "p3", "text": 3}\n',
        b'{"id": "p4", "text": "x", "n": ' + b"9" * 5000 + b"}\n",
        b'["p5", "a top-level array"]\n',
        b'{"id": "p6", "text": "caf\xe9"}\n',
        b'{"id": "p7", "text": "half a pair \\ud800"}\n',
        b'{"id": "p1", "text": "again"}\n',
        b'{"id": 8, "text": "an integer id is fine"}\n',
    ]))
    big_field = "y" * 200_000  # over csv's field size limit
    (tmp_path / "b.csv").write_bytes(b"id,text\n" + b"c1,fine\n" + f'c2,"{big_field}"\n'.encode()
                                     + b"c3,caf\xe9\n" + b"c4,also fine\n")
    log = StageLog("crawl")
    assert [r["id"] for r in read_posts(tmp_path, log)] == ["p1", "8", "c1", "c4"]
    assert [(r["id"], r["reason"]) for r in log.rejects] == [
        ("a.jsonl:2", "wrong_type"), ("a.jsonl:3", "wrong_type"), ("a.jsonl:4", "number_too_long"),
        ("a.jsonl:5", "not_an_object"), ("a.jsonl:6", "invalid_utf8"), ("a.jsonl:7", "lone_surrogate"),
        ("p1", "duplicate_id"), ("b.csv:3", "malformed_csv"), ("b.csv:4", "invalid_utf8")]
    assert [r["detail"] for r in log.rejects if r["id"] == "p1"] == ["seen before (a.jsonl:8)"]
    assert log.counts()["read"] == 13
