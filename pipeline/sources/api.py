"""The X/Twitter API v2 client: search (recent or full archive) and id hydration, crawled into page files.

- Bearer token from an environment variable (`TWITTER_BEARER_TOKEN` by default), never a parameter or a file;
  it is sent only over https (or plain http to a loopback address, for tests), never follows a redirect, and
  is masked out of every error message.
- Rate limits: on HTTP 429 the client sleeps until `x-rate-limit-reset` (epoch seconds, at most
  `MAX_RATE_LIMIT_WAIT`; a later reset fails the crawl, which a rerun resumes) and retries; network errors and
  5xx are retried with exponential backoff by urllib3's Retry.
- A time window: `start_time` (inclusive) and `end_time` (exclusive), the search's own parameters, sent with every
  page of the search; the full-archive endpoint (`all`) reaches back to 2006, `recent` only 7 days.
- Pagination by `meta.next_token`. Every page is written as `page-NNNNN.jsonl` (one twarc2 page per file,
  write-then-rename) before the next is asked for, so a crawl that dies resumes from the last page written.
- `ids`: a file of tweet ids (one per line, `#` comments allowed) hydrated in batches of 100 through
  `GET /2/tweets`; a batch file that exists is not asked for again; ids the API does not return are rejected
  with reason `unavailable` (the API's error title as detail); lines that are not ids, and repeated ids, are
  rejected before anything is asked (`not_an_id`, `duplicate_id`).
"""
from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timezone
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import requests

from durable.atomic import TMP_MARK, write_text
from durable.faults import kill_point
from pipeline.fetch import make_session
from pipeline.report import StageLog
from pipeline.sources.archive import jsonl_lines, read_lines
from pipeline.sources.records import BadRecord, capped_lines

DEFAULT_BASE_URL = "https://api.twitter.com"
DEFAULT_QUERY = "has:images has:hashtags lang:en -is:retweet"
TOKEN_ENV = "TWITTER_BEARER_TOKEN"
ENDPOINTS = {"recent": "/2/tweets/search/recent", "all": "/2/tweets/search/all"}
LOOKUP = "/2/tweets"
BATCH = 100  # the API's limit of ids per lookup
FIELDS = {
    "tweet.fields": "id,text,lang,author_id,created_at,entities,attachments,referenced_tweets",
    "expansions": "attachments.media_keys,author_id",
    "media.fields": "media_key,type,url,width,height",
    "user.fields": "id,username",
}
PAGE_RE = re.compile(r"^page-(\d{5})\.jsonl$")
MAX_RATE_LIMIT_WAIT = 16 * 60  # seconds; the API's rate-limit windows are 15 minutes
SEARCH_RECORD = "search.json"  # in a pages directory: the search its pages answer (a resume must ask the same)


class ApiError(RuntimeError):
    pass


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class ApiClient:
    def __init__(self, base_url: str = DEFAULT_BASE_URL, token_env: str = TOKEN_ENV, timeout: float = 30.0,
                 max_rate_limit_waits: int = 10, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time):
        parts = urlsplit(base_url)
        if not (parts.scheme == "https" or parts.scheme == "http" and is_loopback(parts.hostname)):
            raise ApiError(f"API base URL {base_url!r}: the bearer token is sent only over https "
                           f"(plain http only to a loopback address)")
        token = os.environ.get(token_env)
        if not token:
            raise ApiError(f"set the bearer token in the environment variable {token_env}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_rate_limit_waits = max_rate_limit_waits
        self.sleep, self.clock = sleep, clock
        self._token = token
        # 429 is handled here (wait for the reset time), so urllib3 retries only network errors and 5xx.
        self.session = make_session(retry_statuses=(500, 502, 503, 504))
        self.session.headers["Authorization"] = f"Bearer {token}"

    def error(self, message: str) -> ApiError:
        """An ApiError whose message cannot carry the token (a server may echo the request back)."""
        return ApiError(message.replace(self._token, "[token]"))

    def get(self, path: str, params: dict) -> dict:
        for _ in range(self.max_rate_limit_waits + 1):
            try:
                # No redirects: the Authorization header must go nowhere but the configured server.
                response = self.session.get(self.base_url + path, params=params, timeout=self.timeout,
                                            allow_redirects=False)
            except requests.RequestException as err:
                raise self.error(f"GET {path} failed: {err}") from None
            if response.status_code == 429:
                reset = response.headers.get("x-rate-limit-reset", "")
                wait = float(reset) - self.clock() if reset.isdigit() else 60.0
                if wait > MAX_RATE_LIMIT_WAIT:
                    raise self.error(f"GET {path}: rate limited until {wait:.0f} s from now (over "
                                     f"{MAX_RATE_LIMIT_WAIT} s); run again later, the crawl resumes")
                self.sleep(max(wait, 1.0))
                continue
            if response.status_code != 200:
                raise self.error(f"GET {path}: HTTP {response.status_code}: {response.text[:300]}")
            try:
                page = response.json()
            except ValueError:
                raise self.error(f"GET {path}: the response is not JSON: {response.text[:300]}") from None
            if not isinstance(page, dict):
                raise self.error(f"GET {path}: the response is not a JSON object: {response.text[:300]}")
            return page
        raise self.error(f"GET {path}: still rate limited after {self.max_rate_limit_waits} waits")

    def search(self, query: str, endpoint: str = "recent", next_token: str | None = None,
               max_results: int = 100, start_time: str = "", end_time: str = "") -> dict:
        params = {"query": query, "max_results": max_results, **search_window(start_time, end_time), **FIELDS}
        if next_token:
            params["next_token"] = next_token
        return self.get(ENDPOINTS[endpoint], params)

    def lookup(self, ids: list[str]) -> dict:
        if not 0 < len(ids) <= BATCH:
            raise ValueError(f"lookup takes 1 to {BATCH} ids, got {len(ids)}")
        return self.get(LOOKUP, {"ids": ",".join(ids), **FIELDS})


def api_time(value: str) -> str:
    """An instant as the API v2 takes it, `YYYY-MM-DDTHH:MM:SSZ` in UTC: from a date (`2019-01-01`, its midnight
    UTC) or an ISO 8601 time with its zone (`2019-01-01T08:00:00+08:00`, `...Z`). A time without a zone is
    refused: which instant it means would depend on the machine."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date or time (e.g. 2019-01-01 or 2019-01-01T00:00:00Z)") from None
    if instant.tzinfo is None:
        if "T" in value or " " in value:
            raise ValueError(f"{value!r} has no time zone: add Z (UTC) or an offset such as +08:00")
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def search_window(start_time: str = "", end_time: str = "") -> dict:
    """The search's `start_time` / `end_time` parameters ('' leaves an end open); the start must come first."""
    window = {k: api_time(v) for k, v in (("start_time", start_time), ("end_time", end_time)) if v}
    if len(window) == 2 and window["start_time"] >= window["end_time"]:
        raise ValueError(f"start_time {window['start_time']} is not before end_time {window['end_time']}")
    return window


def _write_page(path: Path, page: dict) -> None:
    write_text(path, json.dumps(page, ensure_ascii=False, sort_keys=True) + "\n")


def _start_pages(pages_dir: Path) -> None:
    """Make `pages_dir`, clearing the temporary files of a killed crawl (the crawl task owns it, under its lock)."""
    pages_dir.mkdir(parents=True, exist_ok=True)
    for leftover in pages_dir.glob(f".*{TMP_MARK}*"):
        leftover.unlink(missing_ok=True)


def next_token_of(page: dict) -> str | None:
    """The page's `meta.next_token` (None at the end of a search); ApiError if it is malformed, since a
    crawl must neither stop early nor loop on it."""
    meta = page.get("meta") or {}
    token = meta.get("next_token") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or token is not None and not isinstance(token, str):
        raise ApiError(f"the page's meta is malformed: {json.dumps(meta)[:200]}")
    return token or None


def page_files(pages_dir: Path) -> list[Path]:
    return sorted(p for p in pages_dir.glob("page-*.jsonl") if PAGE_RE.match(p.name))


def crawl_search(client: ApiClient, query: str, pages_dir: Path, endpoint: str = "recent", max_pages: int = 0,
                 max_results: int = 100, progress: Callable[[str], None] = lambda message: None,
                 start_time: str = "", end_time: str = "") -> list[Path]:
    """Search pages into `pages_dir`, resuming after the last page already there. `max_pages` 0: no limit.
    The search (query, endpoint, window) is recorded beside the pages; resuming a different one is an error,
    since its pages would be mixed with the other search's."""
    search = {"query": query, "endpoint": endpoint, **search_window(start_time, end_time)}
    _start_pages(pages_dir)
    written = page_files(pages_dir)
    record = pages_dir / SEARCH_RECORD
    if written and record.exists() and json.loads(record.read_text()) != search:
        raise ApiError(f"{pages_dir} holds the pages of another search ({record.read_text().strip()}), not "
                       f"{json.dumps(search)}: remove the directory to crawl anew, or ask the same search")
    if not record.exists():
        _write_page(record, search)
    next_token = None
    if written:
        last = json.loads(written[-1].read_text())
        next_token = next_token_of(last)
        if not next_token:
            return written  # the crawl had reached its end
    while not max_pages or len(written) < max_pages:
        page = client.search(query, endpoint, next_token, max_results, start_time, end_time)
        path = pages_dir / f"page-{len(written):05d}.jsonl"
        _write_page(path, page)
        kill_point("crawl_page")
        written.append(path)
        progress(f"crawled {len(written)} pages")
        next_token = next_token_of(page)
        if not next_token:
            break
    return written


def read_ids(path: str | Path, log: StageLog) -> list[str]:
    """The tweet ids of an id file, in order; a line that is not an id (`not_an_id`), is not UTF-8 or too
    long (`invalid_utf8`, `line_too_long`), or repeats an id (`duplicate_id`) is rejected into `log`."""
    ids, seen = [], set()
    for number, line in capped_lines(path):
        where = f"{Path(path).name}:{number}"
        if isinstance(line, BadRecord):
            log.reject(where, line.reason, line.detail)
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not (line.isascii() and line.isdigit() and len(line) <= 20):
            log.reject(where, "not_an_id", f"{line[:80]!r} is not a tweet id")
        elif line in seen:
            log.reject(line, "duplicate_id", f"listed before ({where})")
        else:
            seen.add(line)
            ids.append(line)
    return ids


def hydrate(client: ApiClient, ids: list[str], pages_dir: Path,
            progress: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Look `ids` up in batches of 100, one page file per batch; batches already written are skipped."""
    _start_pages(pages_dir)
    paths = []
    for number, start in enumerate(range(0, len(ids), BATCH)):
        path = pages_dir / f"page-{number:05d}.jsonl"
        batch = ids[start:start + BATCH]
        if not path.exists():
            page = client.lookup(batch)
            page["__cmkp"] = {"requested_ids": batch}
            _write_page(path, page)
        paths.append(path)
        progress(f"hydrated {min(start + BATCH, len(ids))} of {len(ids)} ids")
    return paths


def as_list(value) -> list:
    return value if isinstance(value, list) else [value] if isinstance(value, dict) else []


def unavailable_ids(paths: list[Path], log: StageLog) -> None:
    """Reject the requested ids a lookup page did not return."""
    for path in paths:
        page = json.loads(path.read_text())
        # Only the fields of well-formed entries are used; read_lines rejects the malformed ones.
        returned = {str(t.get("id")) for t in as_list(page.get("data")) if isinstance(t, dict)}
        errors = {str(e.get("resource_id", e.get("value", ""))): str(e.get("title", ""))
                  for e in as_list(page.get("errors")) if isinstance(e, dict)}
        for tweet_id in page.get("__cmkp", {}).get("requested_ids", []):
            if tweet_id not in returned:
                log.reject(tweet_id, "unavailable", errors.get(tweet_id, "not returned by the API"))


def crawl_records(source: str, input_path: str, pages_dir: Path, log: StageLog, base_url: str = DEFAULT_BASE_URL,
                  endpoint: str = "recent", max_pages: int = 0, token_env: str = TOKEN_ENV,
                  progress: Callable[[str], None] = lambda message: None, start_time: str = "",
                  end_time: str = "") -> Iterator[dict]:
    """Crawl (`api`: input is the query) or hydrate (`ids`: input is the id file), then read the pages."""
    client = ApiClient(base_url, token_env)
    if source == "api":
        paths = crawl_search(client, input_path or DEFAULT_QUERY, Path(pages_dir), endpoint, max_pages,
                             progress=progress, start_time=start_time, end_time=end_time)
    elif source == "ids":
        paths = hydrate(client, read_ids(input_path, log), Path(pages_dir), progress=progress)
        unavailable_ids(paths, log)
    else:
        raise ValueError(f"source {source!r} is not crawled through the API")
    return read_lines(jsonl_lines(paths), log, files={})
