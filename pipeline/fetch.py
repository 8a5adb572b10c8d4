"""Getting image bytes: over HTTP(S) with timeouts, retries with backoff, a size cap and a check of the bytes,
or from an archive's own `media/` directory; kept in a content-addressed store so duplicates are stored once.

The store is `OUT/images/<sha[:2]>/<sha>.<ext>`: the name comes from the sha256 of the bytes and the extension
from the bytes' format, never from the URL or the archive's file name.

`ImageJournal` remembers what became of every image asked for (stored, or rejected with its reason), so a stage
that was killed resumes without downloading or validating again what it already has.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from durable.atomic import TMP_MARK, write_bytes, write_text
from durable.faults import kill_point

DEFAULT_DEADLINE = 120.0  # seconds for one whole download, however slowly its bytes come (FetchImages' default)
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 30.0  # seconds of Retry-After waited for; a longer wait defers the image to a rerun
USER_AGENT = "cmkp-pipeline (research dataset builder)"

# Magic numbers -> extension. Only formats Pillow decodes; anything else is not kept.
SIGNATURES = [
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
]


class FetchError(Exception):
    """Why bytes could not be had. `retryable`: the failure may pass (network error, HTTP 429 or 5xx after
    the session's own retries), so a rerun asks again instead of reusing the rejection."""

    def __init__(self, reason: str, detail: str = "", retryable: bool = False):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable


def sniff(data: bytes) -> str | None:
    """The file extension for the image format in `data`, judged from its first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in SIGNATURES:
        if data.startswith(magic):
            return ext
    return None


class CappedRetry(Retry):
    """urllib3's Retry, except that a Retry-After longer than `MAX_RETRY_AFTER` is not waited for: the
    response is handed back at once (and the image deferred to a rerun) instead of sleeping for a day."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        wait = self.get_retry_after(response) if response is not None else None
        if wait is not None and wait > MAX_RETRY_AFTER:
            raise MaxRetryError(_pool, url, ResponseError(f"Retry-After {wait:.0f} s > {MAX_RETRY_AFTER:.0f} s"))
        return super().increment(method, url, response, error, _pool, _stacktrace)


def make_session(retries: int = 3, backoff: float = 0.5,
                 retry_statuses: tuple[int, ...] = (429, 500, 502, 503, 504)) -> requests.Session:
    """A session retrying connection errors and `retry_statuses` with exponential backoff (honouring
    Retry-After up to `MAX_RETRY_AFTER`). Redirects are followed by `download`, hop by hop."""
    retry = CappedRetry(total=retries, connect=retries, read=retries, status=retries, redirect=0,
                        backoff_factor=backoff, status_forcelist=retry_statuses, allowed_methods=("GET", "HEAD"),
                        respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def retry_after(response: requests.Response) -> float | None:
    """The response's Retry-After in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    try:
        return Retry().parse_retry_after(value) if value else None
    except urllib3.exceptions.InvalidHeader:
        return None


def check_url(url: str) -> None:
    """FetchError `bad_url` unless `url` is http(s) with a host that can be resolved as written."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number in range
    except ValueError as err:
        raise FetchError("bad_url", f"unparsable ({err}): {url[:200]}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("bad_url", f"scheme {parts.scheme or '(none)'!r} is not http/https: {url[:200]}")
    if not host:
        raise FetchError("bad_url", f"no host: {url[:200]}")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise FetchError("bad_url", f"host {host[:80]!r}: a label empty or over 63 characters, or over 253 in all")
    try:
        host.encode("idna")
    except UnicodeError as err:
        raise FetchError("bad_url", f"host {host[:80]!r} is not a valid name ({err})") from None


def download(session: requests.Session, url: str, max_bytes: int, timeout: float,
             deadline: float = DEFAULT_DEADLINE) -> bytes:
    """The body at `url`, at most `max_bytes`, within `deadline` seconds in all, or FetchError with the reason.

    Redirects are followed here, at most `MAX_REDIRECTS`, each hop's URL checked like the first (http/https,
    a valid host), so a redirect to `file:` or `data:` is refused and a loop ends. `timeout` bounds each
    connect and each read; `deadline` the whole download, so a server that sends a byte every few seconds
    cannot hold a worker for longer (the check runs between reads: the bound is `deadline` plus one read).
    """
    give_up = time.monotonic() + deadline
    visited = []
    try:
        while True:
            check_url(url)
            if url in visited:
                raise FetchError("redirect_loop", " -> ".join(u[:100] for u in visited + [url]))
            if len(visited) > MAX_REDIRECTS:
                raise FetchError("too_many_redirects", f"more than {MAX_REDIRECTS} from {visited[0][:200]}")
            visited.append(url)
            with session.get(url, stream=True, timeout=timeout, allow_redirects=False) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                return _body(response, url, max_bytes, give_up, deadline)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        raise FetchError("network_error", f"{type(err).__name__}: {err}"[:300], retryable=True) from None
    except ValueError as err:  # a redirect's Location that cannot be parsed (the URLs asked for were checked)
        raise FetchError("bad_url", f"redirected from {url[:200]} to an unparsable URL ({err})") from None


def _body(response: requests.Response, url: str, max_bytes: int, give_up: float, deadline: float) -> bytes:
    if response.status_code != 200:
        wait = retry_after(response)
        if wait is not None and wait > MAX_RETRY_AFTER:
            raise FetchError("deferred", f"HTTP {response.status_code} for {url[:200]} asks to wait {wait:.0f} s "
                             f"(over {MAX_RETRY_AFTER:.0f} s): left for a rerun", retryable=True)
        raise FetchError("http_error", f"HTTP {response.status_code} for {url[:200]}",
                         retryable=response.status_code == 429 or response.status_code >= 500)
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError("too_large", f"Content-Length {declared} > {max_bytes} bytes")
    chunks, size = [], 0
    # read1: whatever one read of the socket gives, so the deadline is checked however slowly bytes come.
    while chunk := response.raw.read1(65536, decode_content=True):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError("too_large", f"more than {max_bytes} bytes")
        if time.monotonic() > give_up:
            raise FetchError("too_slow", f"{size} bytes after the {deadline:.0f} s deadline for {url[:200]}",
                             retryable=True)
        chunks.append(chunk)
    return b"".join(chunks)


def read_local(path: str | Path, max_bytes: int) -> bytes:
    """A file listed in an archive's `media/` (or a release's `images/`): at most `max_bytes`, and only if
    it really lies in that directory (a symlink out of it is refused: `outside_archive`)."""
    path = Path(path)
    try:
        if not path.resolve().is_relative_to(path.parent.resolve()):
            raise FetchError("outside_archive", f"{path.name} links to a file outside {path.parent}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except RuntimeError as err:  # a symlink loop
        raise FetchError("unreadable", f"{path}: {err}", retryable=True) from None
    except FileNotFoundError:
        # Listed when the source was read, gone now: it may come back, so a rerun looks again.
        raise FetchError("image_missing", f"{path} was deleted after the archive was listed", retryable=True) from None
    except OSError as err:
        raise FetchError("unreadable", f"{path}: {err.strerror or err}", retryable=True) from None
    if len(data) > max_bytes:
        raise FetchError("too_large", f"more than {max_bytes} bytes")
    return data


class ImageStore:
    """Content-addressed image files under `root` (the dataset directory): `images/<sha[:2]>/<sha>.<ext>`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, data: bytes, ext: str) -> tuple[str, str]:
        """Store `data` once; return its sha256 and its path relative to the root."""
        sha = hashlib.sha256(data).hexdigest()
        relative = f"images/{sha[:2]}/{sha}.{ext}"
        path = self.root / relative
        if not path.exists():
            write_bytes(path, data)  # a killed run never leaves a partial image under its final name
        return sha, relative

    def remove_leftovers(self) -> None:
        """Remove the temporary files of killed writers (only the stage that owns the store may call this)."""
        for leftover in self.root.glob(f"images/*/.*{TMP_MARK}*"):
            leftover.unlink(missing_ok=True)


class ImageJournal:
    """What became of each image asked for, by key (its URL, or `file:<path>` for a local file), persisted in
    a JSON-lines file so that a killed stage resumes without fetching or validating anything twice.

    The first line holds the parameters the outcomes depend on (size and pixel caps, the JPEG rule); a journal
    written under other parameters is discarded. Each further line is one outcome:
        {"key", "sha256", "path", "size": [w, h], "dhash"}     stored in the ImageStore
        {"key", "reason", "detail", "retry"}                   rejected
    Outcomes are buffered and appended `batch` at a time with one write and an fsync. When the journal is next
    opened, everything from its first line that is not a whole journal line on is cut off (a line torn by a kill
    in the middle of a write, or the NUL bytes a power cut can leave where a write had not reached the disk):
    those outcomes are redone. `get` forgets a rejection marked `retry` (a network error may pass) and a stored
    outcome whose file has gone from the store, so both are redone.
    """

    def __init__(self, path: str | Path, store: ImageStore, parameters: dict, batch: int = 50):
        if batch < 1:
            raise ValueError(f"journal batch must be positive, got {batch}")
        self.path = Path(path)
        self.store = store
        self.batch = batch
        self.outcomes: dict[str, dict] = {}
        self.pending: list[dict] = []
        header = {"parameters": parameters}
        if self.path.exists() and not self._load(header):
            self.path.unlink()  # written under other parameters: its outcomes do not apply
        if not self.path.exists():
            write_text(self.path, json.dumps(header, sort_keys=True) + "\n")

    def _load(self, header: dict) -> bool:
        """Read the outcomes of an existing journal, cutting off a bad tail; False if it was written under other
        parameters (or its header is lost)."""
        data = self.path.read_bytes()
        good, lines = 0, []
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            try:
                entry = json.loads(line.decode("utf-8"))
            except ValueError:  # NUL bytes, a torn line, bytes that are not UTF-8
                break
            if not isinstance(entry, dict) or (lines and not isinstance(entry.get("key"), str)):
                break
            lines.append(entry)
            good += len(line) + 1
        if not lines or lines[0] != header:
            return False
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        for outcome in lines[1:]:
            self.outcomes[outcome["key"]] = outcome
        return True

    def _append(self, lines: list[dict]) -> None:
        payload = "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in lines)
        payload = payload.encode("utf-8")
        with open(self.path, "ab") as f:
            # Two writes with a kill point between them: the fault tests tear a line here.
            f.write(payload[:len(payload) // 2])
            f.flush()
            kill_point("journal_write")
            f.write(payload[len(payload) // 2:])
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: str) -> dict | None:
        """The outcome recorded for `key`, or None if it must be (re)done."""
        outcome = self.outcomes.get(key)
        if outcome is None or outcome.get("retry"):
            return None
        if "path" in outcome and not (self.store.root / outcome["path"]).exists():
            return None
        return outcome

    def add(self, outcome: dict) -> None:
        self.outcomes[outcome["key"]] = outcome
        self.pending.append(outcome)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self._append(self.pending)
            self.pending = []
