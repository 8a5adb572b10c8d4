"""Kills and reruns: a build SIGKILLed at a named point (durable.faults.kill_point, in a subprocess), then run
again, gives a dataset byte-identical to an uninterrupted build and redoes only the interrupted unit; outputs
built from other parameters or inputs are refused by name; two builds on one directory, and 4 workers against 1,
give the same bytes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import luigi
import pytest

from durable import atomic
from durable.faults import KILL_ENV
from pipeline import inputs, shards
from pipeline.fetch import ImageJournal, ImageStore
from pipeline.guard import StaleOutputError
from pipeline.sources import archive as archive_source
from pipeline.tasks import BuildDataset
from pipeline.text_tasks import CrawlTweets, crawl_key
from test_api_crawl import server, token  # noqa: F401  (fixtures: the loopback API server and its token)
from text_archive_fixture import write_archive

ROOT = Path(__file__).resolve().parents[2]
# A tiny archive build (text half: 3 posts kept, shards of one post, image outcomes journaled 2 at a time).
SETTINGS = {"FilterHashtags": {"min_hashtag_count": "1"}, "SplitPosts": {"shard_size": "1"},
            "FetchImages": {"journal_batch": "2"}}
BUILD = """
import json, sys, luigi
config = luigi.configuration.get_config()
for section, values in json.loads(sys.argv[4]).items():
    for key, value in values.items():
        config.set(section, key, value)
from pipeline.tasks import BuildDataset
task = BuildDataset(source="archive", input=sys.argv[1], output=sys.argv[2], features=[])
sys.exit(0 if luigi.build([task], local_scheduler=True, workers=int(sys.argv[3]), log_level="ERROR") else 1)
"""


def start(archive: Path, out: Path, kill_at: str = "", workers: int = 1, settings=SETTINGS) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: kill_at}
    return subprocess.Popen([sys.executable, "-c", BUILD, str(archive), str(out), str(workers), json.dumps(settings)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def build(archive: Path, out: Path, kill_at: str = "", workers: int = 1, settings=SETTINGS) -> int:
    child = start(archive, out, kill_at, workers, settings)
    _, stderr = child.communicate(timeout=110)
    assert child.returncode in (0, 1, -signal.SIGKILL), stderr.decode()[-3000:]
    return child.returncode


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The archive and its dataset built once, without interruption."""
    root = tmp_path_factory.mktemp("reference")
    archive = write_archive(root / "archive")
    assert build(archive, root / "out") == 0
    return archive, files(root / "out")


def assert_same_dataset(out: Path, expected: dict[str, bytes]) -> None:
    found = files(out)
    assert sorted(found) == sorted(expected)
    assert [name for name in expected if found[name] != expected[name]] == []


# Kill points: the n-th atomic rename of the build (stage directories, stored images, the journal's header,
# shards, identity records, manifests), inside the journal's write, between an image's check-and-store and its
# journal line, inside an HDF5 write, and between the final shards and the dataset manifest.
KILLS = ["before_rename:2", "before_rename:25", "journal_write:2",
         "image_checked:3", "hdf5_write:2", "dataset_manifest"]


@pytest.mark.parametrize("kill_at", KILLS)
def test_a_killed_build_reruns_to_the_same_bytes_redoing_only_the_unit_killed(reference, tmp_path, kill_at):
    archive, expected = reference
    out = tmp_path / "out"
    assert build(archive, out, kill_at) == -signal.SIGKILL  # it really died at that point
    assert not (out / "manifest.json").exists()
    left = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")
            if p.is_file() and atomic.TMP_MARK not in str(p.relative_to(out)) and not p.name.endswith("-journal.jsonl")}
    assert build(archive, out) == 0
    assert_same_dataset(out, expected)
    # Whatever the killed run had completed (outputs, stored images, identity records) was not written again.
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in left} == left


def test_a_torn_or_nul_filled_journal_tail_is_cut_off(tmp_path):
    store, parameters = ImageStore(tmp_path), {"max_bytes": 10}
    journal = ImageJournal(tmp_path / "j.jsonl", store, parameters, batch=1)
    journal.add({"key": "a", "reason": "http_error", "detail": "", "retry": False})
    journal.add({"key": "b", "reason": "http_error", "detail": "", "retry": False})
    whole = (tmp_path / "j.jsonl").read_bytes()
    for tail in (b'{"key": "c", "rea', b"\0" * 4096, b"\0" * 10 + b"\n" + b'{"key": "d"}\n', b"\xff\xfe\n"):
        (tmp_path / "j.jsonl").write_bytes(whole + tail)
        reopened = ImageJournal(tmp_path / "j.jsonl", store, parameters, batch=1)
        assert set(reopened.outcomes) == {"a", "b"}
        assert (tmp_path / "j.jsonl").read_bytes() == whole
    (tmp_path / "j.jsonl").write_bytes(b"\0" * 100)  # a journal whose header never reached the disk
    assert ImageJournal(tmp_path / "j.jsonl", store, parameters).outcomes == {}


def test_an_atomic_file_appears_whole_or_leaves_the_old_one_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic.atomic_file(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["run.json"]
    with atomic.atomic_file(target, "w") as f:
        f.write("neu \u00e9\n")
    assert target.read_bytes() == "neu \u00e9\n".encode("utf-8") and os.listdir(tmp_path) == ["run.json"]


def test_renames_follow_an_fsync_of_the_file_and_are_made_durable(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", str(b))) or real_replace(a, b))
    target = tmp_path / "d" / "file.json"
    atomic.write_text(target, "{}\n")
    (kind, written), rename, directory = calls
    assert kind == "fsync" and atomic.TMP_MARK in written and Path(written).parent == target.parent
    assert rename == ("replace", str(target)) and directory == ("fsync", str(target.parent))
    assert target.read_text() == "{}\n" and os.listdir(target.parent) == ["file.json"]


def test_two_builds_on_one_directory_and_four_workers_give_the_same_bytes(reference, tmp_path):
    archive, expected = reference
    first, second = start(archive, tmp_path / "both"), start(archive, tmp_path / "both")
    for child in (first, second):
        _, stderr = child.communicate(timeout=110)
        assert child.returncode == 0, stderr.decode()[-3000:]
    assert_same_dataset(tmp_path / "both", expected)
    assert build(archive, tmp_path / "four", workers=4) == 0
    assert_same_dataset(tmp_path / "four", expected)


def test_other_parameters_or_another_input_are_refused_by_name(reference, tmp_path):
    archive, expected = reference
    out = tmp_path / "out"
    assert build(archive, out) == 0
    stricter = {**SETTINGS, "FilterHashtags": {"min_hashtag_count": "2"}}
    assert build(archive, out, settings=stricter) == 1
    config = luigi.configuration.get_config()
    try:
        for section, values in stricter.items():
            for key, value in values.items():
                config.set(section, key, value)
        with pytest.raises(StaleOutputError, match=r"FilterHashtags\.min_hashtag_count: built with '1', asked '2'"):
            BuildDataset(source="archive", input=str(archive), output=str(out), features=[]).complete()
        other = write_archive(tmp_path / "other")
        with pytest.raises(StaleOutputError, match=r"CrawlTweets\.input_path: built with .*archive.*asked .*other"):
            BuildDataset(source="archive", input=str(other), output=str(out), features=[]).complete()
    finally:
        for section, values in stricter.items():
            for key in values:
                config.remove_option(section, key)
    assert_same_dataset(out, expected)  # nothing was touched


def test_an_input_file_replaced_under_its_path_is_refused_by_name(tmp_path):
    archive, out = write_archive(tmp_path / "archive"), tmp_path / "out"
    assert build(archive, out) == 0
    expected = files(out)
    record = out / "work" / "crawl" / inputs.RECORD_NAME
    media = sorted((archive / "media").iterdir())

    # The same bytes with a new time (a copy, a touch): accepted, nothing rebuilt, the record's time refreshed.
    stat = media[0].stat()
    os.utime(media[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert build(archive, out) == 0
    found = files(out)
    assert [name for name in expected if found[name] != expected[name]] == ["work/crawl/" + inputs.RECORD_NAME]
    assert [e.sha256 for e in inputs.read_record(record, str(archive)).values()] == [
        e["sha256"] for e in json.loads(expected["work/crawl/" + inputs.RECORD_NAME])["files"]]

    # Other bytes under the same path, a page added, a file removed: refused, each named; nothing touched.
    before = files(out)
    media[0].write_bytes(media[0].read_bytes() + b"\0")
    (archive / "more.jsonl").write_text((archive / "b.jsonl").read_text())
    media[1].unlink()
    with pytest.raises(StaleOutputError) as refused:
        BuildDataset(source="archive", input=str(archive), output=str(out), features=[]).complete()
    assert f"media/{media[0].name}: other bytes; media/{media[1].name}: removed; more.jsonl: added" in str(
        refused.value)
    assert build(archive, out) == 1
    assert files(out) == before


def test_the_input_is_hashed_only_where_size_or_mtime_changed(tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "archive")
    listed = archive_source.input_files(archive)
    stage = tmp_path / "crawl"
    stage.mkdir()
    hashed = []
    monkeypatch.setattr(inputs, "sha256_file", lambda path: hashed.append(Path(path).name) or shards.sha256_file(path))
    first = inputs.InputFiles(str(archive), listed, stage)
    assert sorted(hashed) == sorted(p.name for p in listed)   # no record yet: every file read once
    first.write(stage)
    hashed.clear()
    assert inputs.InputFiles(str(archive), listed, stage).digest() == first.digest() and hashed == []
    os.utime(listed[-1], ns=(0, listed[-1].stat().st_mtime_ns + 1))
    assert inputs.InputFiles(str(archive), listed, stage).digest() == first.digest() and hashed == [listed[-1].name]


CRAWL = """
import sys, luigi
from pipeline.text_tasks import CrawlTweets
task = CrawlTweets(source="api", input_path=sys.argv[2], dataset_dir=sys.argv[1], api_base_url=sys.argv[3],
                   token_env=sys.argv[4])
sys.exit(0 if luigi.build([task], local_scheduler=True, workers=1, log_level="ERROR") else 1)
"""


def test_a_crawl_killed_mid_way_resumes_its_own_query_only(server, token, tmp_path):  # noqa: F811
    def crawl(out: Path, query: str, kill_at: str = "") -> int:
        env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: kill_at}
        return subprocess.run([sys.executable, "-c", CRAWL, str(out), query, server.url, token], cwd=ROOT,
                              env=env, capture_output=True, timeout=110).returncode

    assert crawl(tmp_path / "whole", "q") == 0
    assert crawl(tmp_path / "out", "q", "crawl_page:2") == -signal.SIGKILL  # two of the three pages written
    asked = len(server.requests)
    assert crawl(tmp_path / "out", "q") == 0
    assert [query.get("next_token") for _, query in server.requests[asked:]] == ["t2"]  # only the last page
    assert files(tmp_path / "out" / "work" / "crawl") == files(tmp_path / "whole" / "work" / "crawl")
    task = CrawlTweets(source="api", input_path="q", dataset_dir=str(tmp_path / "out"))
    other = CrawlTweets(source="api", input_path="another query", dataset_dir=str(tmp_path / "out"))
    assert crawl_key(task) != crawl_key(other)  # another query never resumes from these pages
    assert Counter(p.parent.name for p in (tmp_path / "out" / "work" / "crawl-pages").rglob("page-*")) == {
        crawl_key(task): 3}


def test_the_model_reads_a_dataset_only_through_its_manifests(tmp_path):
    import shutil

    from model.data import read_split, split_names
    from test_model import POSTS, write_dataset

    data = write_dataset(tmp_path / "data")
    assert split_names(data) == ["train", "valid"] and len(read_split(data, "train").posts) == len(POSTS)
    shutil.copy(data / "train" / "shard-00000.h5", data / "train" / "shard-00001.h5")  # not listed: never read
    assert len(read_split(data, "train").posts) == len(POSTS)
    with open(data / "valid" / "shard-00000.h5", "r+b") as f:  # a listed shard changed after the build
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    with pytest.raises(ValueError, match=r"valid/shard-00000\.h5 does not match the checksum"):
        read_split(data, "valid")
    (data / "manifest.json").unlink()  # an unfinished build: refused whole
    for read in (lambda: split_names(data), lambda: read_split(data, "train")):
        with pytest.raises(FileNotFoundError, match="no manifest.json: not a complete dataset"):
            read()
