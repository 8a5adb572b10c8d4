"""Image downloads against misbehaving loopback servers and hostile URLs: each ends, within its bounds, in a
stored image or a rejection with its own reason; permanent faults are journaled as final, transient ones are
asked again by a rerun."""
from __future__ import annotations

import itertools
import time

import pytest

from loopback import loopback, redirect, reply
from pipeline.clean import fetch_images
from pipeline.fetch import FetchError, ImageJournal, ImageStore, download, make_session
from pipeline.report import StageLog
from text_archive_fixture import colour_jpeg

JPEG = colour_jpeg(1)


def endless(handler):
    """A body without Content-Length that never ends (the connection-close framing of HTTP/1.0)."""
    handler.send_response(200)
    handler.end_headers()
    for _ in range(10_000):  # 640 MB at most, should the client never stop reading
        handler.wfile.write(b"\xff" * 65536)


def trickle(handler):
    """A byte every 0.3 s: every single read is quick, the download as a whole is not."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b"\xff")
        handler.wfile.flush()
        time.sleep(0.3)


def once_then(first, then):
    answers = itertools.chain([first], itertools.repeat(then))
    return lambda handler: next(answers)(handler)


ROUTES = {
    "/ok.jpg": lambda h: reply(h, 200, JPEG),
    "/to-ok": redirect("/ok.jpg"),
    "/to-file": redirect("file:///etc/passwd"),
    "/to-ftp": redirect("ftp://127.0.0.1/a.jpg"),
    "/to-data": redirect("data:image/jpeg;base64,/9j/4AAQ"),
    "/to-bad-host": redirect("http://[::1/x"),
    "/loop-a": redirect("/loop-b"),
    "/loop-b": redirect("/loop-a"),
    **{f"/chain-{i}": redirect(f"/chain-{i + 1}") for i in range(20)},
    "/endless": endless,
    "/trickle": trickle,
    "/retry-after-a-day": lambda h: reply(h, 503, b"busy", {"Retry-After": "86400"}),
    "/missing": lambda h: reply(h, 404, b"not found"),
    "/always-busy": lambda h: reply(h, 503, b"busy"),
}


@pytest.fixture
def server():
    routes = dict(ROUTES, **{"/503-then-200": once_then(lambda h: reply(h, 503, b"busy"), lambda h: reply(h, 200, JPEG)),
                             "/short-retry-after": once_then(lambda h: reply(h, 429, b"", {"Retry-After": "1"}),
                                                             lambda h: reply(h, 200, JPEG))})
    with loopback(routes) as (url, requests):
        yield url, requests


def outcome(url, **kwargs) -> tuple[str, float]:
    """(the reason, or "stored"; seconds taken) of one download."""
    session = make_session(retries=2, backoff=0.01)
    start = time.monotonic()
    try:
        assert download(session, url, **{"max_bytes": 1 << 20, "timeout": 20.0, **kwargs}) == JPEG
        return "stored", time.monotonic() - start
    except FetchError as err:
        return err.reason, time.monotonic() - start


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg", "data:image/jpeg;base64,/9j/4AAQ",
                                 "127.0.0.1/ok.jpg", "//127.0.0.1/ok.jpg", "http://[::1/x",
                                 "http://" + "a" * 64 + ".example.org/x.jpg", "http://a..b/x.jpg",
                                 "http://127.0.0.1:99999/x.jpg", "http:///x.jpg"])
def test_urls_that_are_not_http_or_have_no_valid_host_are_refused_unasked(url):
    assert outcome(url) == ("bad_url", pytest.approx(0, abs=0.5))


@pytest.mark.parametrize("path, reason", [("/to-ok", "stored"), ("/to-file", "bad_url"), ("/to-ftp", "bad_url"),
                                          ("/to-data", "bad_url"), ("/to-bad-host", "bad_url"),
                                          ("/loop-a", "redirect_loop"), ("/chain-0", "too_many_redirects")])
def test_every_redirect_hop_is_checked(server, path, reason):
    url, requests = server
    assert outcome(url + path)[0] == reason
    assert len(requests) <= 7  # at most MAX_REDIRECTS + 1 hops asked for


def test_a_body_that_never_ends_is_cut_at_the_size_cap(server):
    url, _ = server
    reason, seconds = outcome(url + "/endless", max_bytes=1 << 20)
    assert reason == "too_large" and seconds < 10


def test_a_trickling_server_is_cut_at_the_deadline_not_the_read_timeout(server):
    url, _ = server
    reason, seconds = outcome(url + "/trickle", timeout=5, deadline=2)
    assert reason == "too_slow" and 2 <= seconds < 2 + 5


def test_retry_after_of_a_day_defers_at_once_and_a_short_one_is_waited_for(server):
    url, requests = server
    reason, seconds = outcome(url + "/retry-after-a-day")
    assert reason == "deferred" and seconds < 5 and len(requests) == 1  # not retried, not waited for
    reason, seconds = outcome(url + "/short-retry-after")
    assert reason == "stored" and seconds >= 0.9


def test_404_is_final_and_503_then_200_is_stored(server):
    url, _ = server
    with pytest.raises(FetchError) as err:
        download(make_session(retries=2, backoff=0.01), url + "/missing", 1 << 20, 20.0)
    assert err.value.reason == "http_error" and not err.value.retryable
    assert outcome(url + "/503-then-200")[0] == "stored"


def post(tid: int, url: str) -> dict:
    return {"id": str(tid), "text": "t", "media": [{"media_key": f"k{tid}", "type": "photo", "url": url, "file": ""}]}


def test_a_rerun_asks_again_only_what_may_pass(server, tmp_path):
    url, requests = server
    session = make_session(retries=1, backoff=0.01)
    paths = ["/ok.jpg", "/missing", "/always-busy", "/to-file", "/retry-after-a-day"]

    def run() -> dict[str, str]:
        log = StageLog("images")
        journal = ImageJournal(tmp_path / "journal.jsonl", ImageStore(tmp_path), {"max_bytes": 1 << 20}, batch=1)
        kept = list(fetch_images([post(i, url + p) for i, p in enumerate(paths)], log, journal,
                                 lambda u: download(session, u, 1 << 20, 20.0), 1 << 20, 89_478_485, True))
        assert log.counts()["read"] == len(paths)
        return {**{r["id"]: "stored" for r in kept}, **{r["id"]: r["reason"] for r in log.rejects}}

    assert run() == {"0": "stored", "1": "http_error", "2": "http_error", "3": "bad_url", "4": "deferred"}
    first = [p for p, _ in requests]
    assert run() == {"0": "stored", "1": "http_error", "2": "http_error", "3": "bad_url", "4": "deferred"}
    again = [p for p, _ in requests[len(first):]]
    # Final outcomes (stored, 404, a refused URL) come from the journal; 503s and the deferred image are retried.
    assert sorted(set(again)) == ["/always-busy", "/retry-after-a-day"]
