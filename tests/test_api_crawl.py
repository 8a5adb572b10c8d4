"""The API v2 client against a loopback server that speaks the protocol: pagination, a 429 with
`x-rate-limit-reset`, a crawl that dies and resumes, id hydration; image downloads, and an image fetch that is
killed and resumes. Never a live call."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import luigi
import pytest

from pipeline import fetch
from pipeline.fetch import FetchError, make_session
from pipeline.report import StageLog
from pipeline.sources import api
from pipeline.text_tasks import CrawlTweets, FetchImages, read_jsonl
from text_archive_fixture import colour_jpeg, png_bytes, tweet

ROOT = Path(__file__).resolve().parents[1]

TOKEN = "test-token"
TWEETS = {str(i): tweet(i, f"Post number {i} about the game #SuperBowl", [f"m{i}"]) for i in range(1, 8)}
MEDIA = {f"m{i}": {"media_key": f"m{i}", "type": "photo", "url": f"/media/m{i}.jpg"} for i in range(1, 8)}
# Search results: three pages linked by next_token.
PAGES = {None: (["1", "2", "3"], "t1"), "t1": (["4", "5", "6"], "t2"), "t2": (["7"], None)}


class Server:
    """State shared with the handler: what to answer and every request seen."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.rate_limit_once: set[str | None] = set()  # next_tokens answered once with 429
        self.fail_once: set[str | None] = set()  # next_tokens answered once with 400 (a crash mid-crawl)
        self.flaky = 1  # /media/flaky.jpg: 503 this many times, then 200
        self.bodies: dict[str, bytes | None] = {}  # media key -> other bytes to serve (None: 404)
        self.stall: set[str] = set()  # media paths answered only once `release` is set (the first time)
        self.reached = threading.Event()  # set when a stalled path is asked for
        self.release = threading.Event()


def handler_for(state: Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body: bytes, content_type="application/json", headers=()):
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client was killed while waiting (the killed-fetch test)

        def page(self, ids):
            return {"data": [TWEETS[i] for i in ids if i in TWEETS],
                    "includes": {"media": [dict(MEDIA[f"m{i}"], url=self.base() + MEDIA[f"m{i}"]["url"])
                                           for i in ids if i in TWEETS]}}

        def base(self):
            return f"http://127.0.0.1:{self.server.server_address[1]}"

        def do_GET(self):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            state.requests.append((url.path, query))
            if url.path.startswith("/media/"):
                if url.path == "/media/flaky.jpg" and state.flaky > 0:
                    state.flaky -= 1
                    return self.reply(503, b"busy", "text/plain")
                if url.path == "/media/big.jpg":
                    return self.reply(200, b"\xff\xd8\xff" + b"0" * 5000, "image/jpeg")
                if url.path in state.stall:
                    state.stall.discard(url.path)
                    state.reached.set()
                    state.release.wait(timeout=60)
                key = url.path.rsplit("/", 1)[1].split(".")[0]
                if key in state.bodies:
                    body = state.bodies[key]
                    return self.reply(404, b"not found", "text/plain") if body is None else self.reply(200, body)
                if key in MEDIA:
                    return self.reply(200, colour_jpeg(int(key[1:])), "image/jpeg")
                if key == "flaky":
                    return self.reply(200, colour_jpeg(1), "image/jpeg")
                return self.reply(404, b"not found", "text/plain")
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.reply(401, b'{"title": "Unauthorized"}')
            if url.path in api.ENDPOINTS.values():
                token = query.get("next_token")
                if token in state.rate_limit_once:
                    state.rate_limit_once.discard(token)
                    reset = str(int(time.time()) + 30)
                    return self.reply(429, b'{"title": "Too Many Requests"}', headers=[("x-rate-limit-reset", reset)])
                if token in state.fail_once:
                    state.fail_once.discard(token)
                    return self.reply(400, b'{"title": "Invalid Request"}')
                ids, next_token = PAGES[token]
                body = self.page(ids)
                body["meta"] = {"result_count": len(ids), **({"next_token": next_token} if next_token else {})}
                return self.reply(200, json.dumps(body).encode())
            if url.path == api.LOOKUP:
                ids = query["ids"].split(",")
                body = self.page(ids)
                body["errors"] = [{"resource_id": i, "title": "Not Found Error"} for i in ids if i not in TWEETS]
                return self.reply(200, json.dumps(body).encode())
            return self.reply(404, b'{"title": "Not Found"}')

    return Handler


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("CMKP_TEST_TOKEN", TOKEN)
    return "CMKP_TEST_TOKEN"


def test_search_paginates_and_waits_out_a_429(server, token, tmp_path):
    server.rate_limit_once.add("t1")
    waits = []
    client = api.ApiClient(server.url, token, sleep=waits.append, clock=lambda: time.time())
    paths = api.crawl_search(client, "has:images", tmp_path / "pages")
    assert [p.name for p in paths] == ["page-00000.jsonl", "page-00001.jsonl", "page-00002.jsonl"]
    assert len(waits) == 1 and 25 <= waits[0] <= 31  # slept until x-rate-limit-reset (now + 30 s)
    searches = [q for path, q in server.requests if path == api.ENDPOINTS["recent"]]
    assert [q.get("next_token") for q in searches] == [None, "t1", "t1", "t2"]  # the 429'd page asked again
    assert searches[0]["query"] == "has:images" and "attachments.media_keys" in searches[0]["expansions"]
    log = StageLog("crawl")
    records = list(api.read_lines(api.jsonl_lines(paths), log, files={}))
    assert [r["id"] for r in records] == [str(i) for i in range(1, 8)]
    assert records[0]["media"][0]["url"] == server.url + "/media/m1.jpg"
    assert log.counts() == {"read": 7, "kept": 7, "rejected": {}}


def test_a_crawl_that_dies_resumes_from_the_last_page_written(server, token, tmp_path):
    server.fail_once.add("t2")
    client = api.ApiClient(server.url, token, sleep=lambda s: None)
    with pytest.raises(api.ApiError, match="HTTP 400"):
        api.crawl_search(client, "q", tmp_path / "pages")
    assert [p.name for p in api.page_files(tmp_path / "pages")] == ["page-00000.jsonl", "page-00001.jsonl"]
    before = len(server.requests)
    paths = api.crawl_search(client, "q", tmp_path / "pages")
    assert [q.get("next_token") for _, q in server.requests[before:]] == ["t2"]  # pages 0 and 1 not re-fetched
    assert len(paths) == 3
    before = len(server.requests)
    assert len(api.crawl_search(client, "q", tmp_path / "pages")) == 3  # finished crawl: nothing asked
    assert len(server.requests) == before


def test_hydrate_ids_in_batches_of_100_and_reject_missing(server, token, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "BATCH", 3)  # 5 ids -> batches of 3 and 2, like 100s on the real service
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# shared ids\n1\n2\n999\n4\n5\n")
    log = StageLog("crawl")
    records = list(api.crawl_records("ids", str(ids_file), tmp_path / "pages", log, base_url=server.url,
                                     token_env=token))
    lookups = [q["ids"] for path, q in server.requests if path == api.LOOKUP]
    assert lookups == ["1,2,999", "4,5"]
    assert [r["id"] for r in records] == ["1", "2", "4", "5"]
    assert log.counts() == {"read": 5, "kept": 4, "rejected": {"unavailable": 1}}
    assert log.rejects[0] == {"id": "999", "stage": "crawl", "reason": "unavailable", "detail": "Not Found Error"}
    # Rerun: the batch files exist, nothing is asked again.
    before = len(server.requests)
    list(api.crawl_records("ids", str(ids_file), tmp_path / "pages", StageLog("crawl"), base_url=server.url,
                           token_env=token))
    assert len(server.requests) == before


def test_missing_token_and_wrong_token_are_clear_errors(server, tmp_path, monkeypatch):
    monkeypatch.delenv("CMKP_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(api.ApiError, match="CMKP_NO_SUCH_TOKEN"):
        api.ApiClient(server.url, "CMKP_NO_SUCH_TOKEN")
    monkeypatch.setenv("CMKP_WRONG_TOKEN", "nope")
    with pytest.raises(api.ApiError, match="HTTP 401"):
        api.ApiClient(server.url, "CMKP_WRONG_TOKEN").search("q")


def test_crawl_task_with_the_api_source(server, token, tmp_path):
    task = CrawlTweets(source="api", input_path="has:images", dataset_dir=str(tmp_path / "out"),
                       api_base_url=server.url, token_env=token, max_pages=2)
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    records = list(read_jsonl(tmp_path / "out" / "work" / "crawl" / "posts.jsonl"))
    assert [r["id"] for r in records] == ["1", "2", "3", "4", "5", "6"]
    assert json.loads((tmp_path / "out" / "work" / "crawl" / "counts.json").read_text())["kept"] == 6


def test_download_checks_scheme_status_size_and_retries(server):
    session = make_session(retries=2, backoff=0.01)

    def download(url, max_bytes=1 << 20, timeout=20.0):
        return fetch.download(session, url, max_bytes, timeout)

    assert download(server.url + "/media/m1.jpg") == colour_jpeg(1)
    assert download(server.url + "/media/flaky.jpg") == colour_jpeg(1)  # a 503, retried
    with pytest.raises(FetchError) as err:
        download(server.url + "/media/none.jpg")
    assert err.value.reason == "http_error" and "404" in err.value.detail and not err.value.retryable
    with pytest.raises(FetchError) as err:
        download(server.url + "/media/big.jpg", max_bytes=1000)
    assert err.value.reason == "too_large"
    for url in ("file:///etc/passwd", "ftp://example.org/a.jpg", "/media/m1.jpg"):
        with pytest.raises(FetchError) as err:
            download(url)
        assert err.value.reason == "bad_url"
    with pytest.raises(FetchError) as err:
        download("http://127.0.0.1:9/closed.jpg", timeout=2)
    assert err.value.reason == "network_error" and err.value.retryable  # a rerun asks again


# The child process of the killed-fetch test: FetchImages over the crawl already in the dataset directory.
FETCH_CHILD = """
import sys, luigi
from pipeline.text_tasks import FetchImages
luigi.build([FetchImages(source="api", input_path="q", dataset_dir=sys.argv[1], journal_batch=2)],
            local_scheduler=True, workers=1, log_level="WARNING")
"""


def test_a_killed_image_fetch_resumes_without_fetching_anything_twice(server, token, tmp_path):
    out = tmp_path / "out"
    crawl = CrawlTweets(source="api", input_path="q", dataset_dir=str(out), api_base_url=server.url,
                        token_env=token)
    assert luigi.build([crawl], local_scheduler=True, workers=1, log_level="WARNING")
    server.bodies["m3"] = png_bytes(3)  # rejected (not_jpeg): the rejection is journaled too
    server.bodies["m4"] = None  # a 404: a final http_error, not asked again
    server.stall.add("/media/m5.jpg")  # the fetch is killed while waiting for the fifth image

    child = subprocess.Popen([sys.executable, "-c", FETCH_CHILD, str(out)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert server.reached.wait(timeout=120), "the child never reached the fifth image"
    finally:
        child.kill()
        child.wait()
    assert not (out / "work" / "images").exists()  # the stage's output was never written
    journal = [json.loads(line) for line in (out / "work" / "images-journal.jsonl").read_text().splitlines()]
    assert [(o["key"].rsplit("/", 1)[1], o.get("reason")) for o in journal[1:]] == [
        ("m1.jpg", None), ("m2.jpg", None), ("m3.jpg", "not_jpeg"), ("m4.jpg", "http_error")]
    server.release.set()

    task = FetchImages(source="api", input_path="q", dataset_dir=str(out), journal_batch=2)
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    fetched = Counter(path for path, _ in server.requests if path.startswith("/media/"))
    # m5's first request died with the child; everything answered before the kill was never asked again.
    assert fetched == {"/media/m1.jpg": 1, "/media/m2.jpg": 1, "/media/m3.jpg": 1, "/media/m4.jpg": 1,
                       "/media/m5.jpg": 2, "/media/m6.jpg": 1, "/media/m7.jpg": 1}
    counts = json.loads((out / "work" / "images" / "counts.json").read_text())
    assert counts == {"read": 7, "kept": 5, "rejected": {"http_error": 1, "not_jpeg": 1}}
    kept = list(read_jsonl(out / "work" / "images" / "posts.jsonl"))
    assert [r["id"] for r in kept] == ["1", "2", "5", "6", "7"]
    assert [r["image_size"] for r in kept] == [[64, 48]] * 5
    for r in kept:
        assert (out / r["image_path"]).read_bytes() == colour_jpeg(int(r["id"]))
    rejects = [json.loads(line) for line in (out / "work" / "images" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("3", "not_jpeg"), ("4", "http_error")]
    assert len(list((out / "images").rglob("*.jpg"))) == 5


def test_api_times_are_utc_instants():
    assert api.api_time("2019-01-01") == "2019-01-01T00:00:00Z"
    assert api.api_time("2019-06-30T23:59:59Z") == "2019-06-30T23:59:59Z"
    assert api.api_time("2019-01-01T08:00:00+08:00") == "2019-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="no time zone"):
        api.api_time("2019-01-01T00:00:00")
    with pytest.raises(ValueError, match="not an ISO 8601"):
        api.api_time("January 2019")
    assert api.search_window() == {} and api.search_window(end_time="2019-07-01") == {"end_time": "2019-07-01T00:00:00Z"}
    with pytest.raises(ValueError, match="not before"):
        api.search_window("2019-07-01", "2019-01-01")


def test_full_archive_search_in_a_time_window_and_resume_of_another_window(server, token, tmp_path):
    client = api.ApiClient(server.url, token, sleep=lambda s: None)
    paths = api.crawl_search(client, "q", tmp_path / "pages", endpoint="all",
                             start_time="2019-01-01", end_time="2019-07-01T08:00:00+08:00")
    assert len(paths) == 3
    searches = [q for path, q in server.requests if path == api.ENDPOINTS["all"]]
    # every page of the search carries the window, the continuation pages included
    assert [(q["start_time"], q["end_time"], q.get("next_token")) for q in searches] == [
        ("2019-01-01T00:00:00Z", "2019-07-01T00:00:00Z", t) for t in (None, "t1", "t2")]
    assert json.loads((tmp_path / "pages" / "search.json").read_text()) == {
        "query": "q", "endpoint": "all", "start_time": "2019-01-01T00:00:00Z", "end_time": "2019-07-01T00:00:00Z"}
    before = len(server.requests)
    with pytest.raises(api.ApiError, match="another search"):
        api.crawl_search(client, "q", tmp_path / "pages", endpoint="all", start_time="2019-02-01")
    assert len(server.requests) == before  # nothing asked, nothing mixed
    assert len(api.crawl_search(client, "q", tmp_path / "pages", endpoint="all", start_time="2019-01-01",
                                end_time="2019-07-01T00:00:00Z")) == 3   # the same window, spelled otherwise


def test_crawl_task_passes_its_time_window(server, token, tmp_path):
    task = CrawlTweets(source="api", input_path="has:images", dataset_dir=str(tmp_path / "out"),
                       api_base_url=server.url, token_env=token, api_endpoint="all",
                       start_time="2019-01-01", end_time="2019-07-01")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    searches = [q for path, q in server.requests if path == api.ENDPOINTS["all"]]
    assert len(searches) == 3 and {q["start_time"] for q in searches} == {"2019-01-01T00:00:00Z"}
    assert {q["end_time"] for q in searches} == {"2019-07-01T00:00:00Z"}
    assert len(list(read_jsonl(tmp_path / "out" / "work" / "crawl" / "posts.jsonl"))) == 7
