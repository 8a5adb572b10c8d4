"""The bearer token never leaves the configured server and never appears in an error, a log or a file, even
when the server echoes the request back; a plain-http API base URL is refused unless it is loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopback import loopback, redirect, reply
from pipeline.sources import api

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "AAAA-secret-bearer-token-0123456789"


def echo(handler):
    """A server that echoes the request's headers (the Authorization header too) in a 400 body."""
    reply(handler, 400, json.dumps({"title": "Bad", "you sent": dict(handler.headers)}).encode())


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("CMKP_TEST_TOKEN", TOKEN)
    return "CMKP_TEST_TOKEN"


@pytest.mark.parametrize("base", ["http://api.twitter.com", "http://10.0.0.1:8080", "ftp://127.0.0.1"])
def test_a_plain_http_base_url_is_refused_unless_loopback(token, base):
    with pytest.raises(api.ApiError, match="only over https"):
        api.ApiClient(base, token)


@pytest.mark.parametrize("base", ["https://api.twitter.com", "http://127.0.0.1:1", "http://localhost:1",
                                  "http://[::1]:1"])
def test_https_and_loopback_base_urls_are_accepted(token, base):
    assert api.ApiClient(base, token).base_url == base


def test_an_echoing_server_does_not_get_the_token_into_the_error(token):
    with loopback({api.ENDPOINTS["recent"]: echo}) as (url, requests):
        with pytest.raises(api.ApiError) as err:
            api.ApiClient(url, token).search("q")
    assert requests[0][1]["Authorization"] == f"Bearer {TOKEN}"  # it was sent, and echoed back
    assert "HTTP 400" in str(err.value) and "[token]" in str(err.value) and TOKEN not in str(err.value)


def test_the_token_does_not_follow_a_redirect(token):
    with loopback({api.ENDPOINTS["recent"]: redirect("/elsewhere"), "/elsewhere": echo}) as (url, requests):
        with pytest.raises(api.ApiError, match="HTTP 302"):
            api.ApiClient(url, token).search("q")
    assert [path.split("?")[0] for path, _ in requests] == [api.ENDPOINTS["recent"]]


def test_a_failed_crawl_keeps_the_token_out_of_its_output_logs_and_files(token, tmp_path):
    out = tmp_path / "out"
    with loopback({api.ENDPOINTS["recent"]: echo}) as (url, _):
        done = subprocess.run(
            [sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "CrawlTweets", "--source", "api",
             "--input-path", "has:images", "--dataset-dir", str(out), "--api-base-url", url,
             "--token-env", token, "--local-scheduler"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=100)
    assert done.returncode != 0 and "HTTP 400" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
