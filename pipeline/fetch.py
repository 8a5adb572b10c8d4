"""Getting image bytes: over HTTP(S) with timeouts, retries with backoff, a size cap and a check of the bytes,
or from an archive's own `media/` directory; kept in a content-addressed store so duplicates are stored once.

The store is `OUT/images/<sha[:2]>/<sha>.<ext>`: the name comes from the sha256 of the bytes and the extension
from the bytes' format, never from the URL or the archive's file name.

`ImageJournal` remembers what became of every image asked for (stored, or rejected with its reason), so a stage
that was killed resumes without downloading or validating again what it already has.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
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


def make_session(retries: int = 3, backoff: float = 0.5,
                 retry_statuses: tuple[int, ...] = (429, 500, 502, 503, 504)) -> requests.Session:
    """A session retrying connection errors and `retry_statuses` with exponential backoff (honouring
    Retry-After)."""
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                  status_forcelist=retry_statuses, allowed_methods=("GET", "HEAD"),
                  respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def download(session: requests.Session, url: str, max_bytes: int = DEFAULT_MAX_BYTES,
             timeout: float = 20.0) -> bytes:
    """The body at `url` (http/https only), at most `max_bytes`, or FetchError with the reason."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("bad_url", f"scheme {scheme or '(none)'!r} is not http/https: {url[:200]}")
    try:
        with session.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
            # Redirects are followed by requests; a redirect to another scheme is refused too.
            if urlsplit(response.url).scheme.lower() not in ("http", "https"):
                raise FetchError("bad_url", f"redirected to {response.url[:200]}")
            if response.status_code != 200:
                raise FetchError("http_error", f"HTTP {response.status_code} for {url[:200]}",
                                 retryable=response.status_code == 429 or response.status_code >= 500)
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", f"Content-Length {declared} > {max_bytes} bytes")
            chunks, size = [], 0
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"more than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as err:
        raise FetchError("network_error", f"{type(err).__name__}: {err}"[:300], retryable=True) from None


def read_local(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise FetchError("too_large", f"{size} bytes > {max_bytes}")
    return Path(path).read_bytes()


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
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write-then-rename: a killed run never leaves a partial image under its final name.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha}-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha, relative


class ImageJournal:
    """What became of each image asked for, by key (its URL, or `file:<path>` for a local file), persisted in
    a JSON-lines file so that a killed stage resumes without fetching or validating anything twice.

    The first line holds the parameters the outcomes depend on (size and pixel caps, the JPEG rule); a journal
    written under other parameters is discarded. Each further line is one outcome:
        {"key", "sha256", "path", "size": [w, h], "dhash"}     stored in the ImageStore
        {"key", "reason", "detail", "retry"}                   rejected
    Outcomes are buffered and appended `batch` at a time with one write and an fsync. A line torn by a kill in
    the middle of a write is cut off when the journal is next opened. `get` forgets a rejection marked `retry`
    (a network error may pass) and a stored outcome whose file has gone from the store, so both are redone.
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([header])

    def _load(self, header: dict) -> bool:
        """Read the outcomes of an existing journal; False if it was written under other parameters."""
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with open(self.path, "r+b") as f:  # a line torn by a kill: drop it
                f.truncate(len(complete))
        lines = complete.decode("utf-8").splitlines()
        if not lines or json.loads(lines[0]) != header:
            return False
        for number, line in enumerate(lines[1:], 2):
            try:
                outcome = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number} is not a journal line ({err}); delete the file to "
                                 f"start the stage's images afresh") from None
            self.outcomes[outcome["key"]] = outcome
        return True

    def _append(self, lines: list[dict]) -> None:
        payload = "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in lines)
        with open(self.path, "ab") as f:
            f.write(payload.encode("utf-8"))
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
