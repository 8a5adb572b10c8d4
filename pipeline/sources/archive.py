"""twarc2 archives: JSONL files of X/Twitter API v2 response pages, or of already-flattened tweets.

A page line is `{"data": [tweet, ...], "includes": {"media": [...], "users": [...]}, "meta": {...}}`; a
flattened line is one tweet whose `attachments.media` holds the media objects themselves (twarc2 `flatten`).
Either way each tweet becomes one post record:

    id, text, lang, author_id, created_at, is_retweet,
    entities: {hashtags: [{start, end, tag}], urls: [...], mentions: [...]},
    media: [{media_key, type, url, file}]   (`file`: the archive's own copy in `media/<media_key>.<ext>`, or "")

Lines that are not JSON or not a page/tweet are rejected (reason `malformed_json`, `unrecognized_line`), as are
tweets seen before (`duplicate_id`); nothing is dropped without a record in the stage log.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.report import StageLog


def media_files(directory: str | Path) -> dict[str, Path]:
    """`media/<media_key>.<ext>` files of an archive, by media key (any extension)."""
    media_dir = Path(directory) / "media"
    if not media_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(media_dir.iterdir()) if p.is_file()}


def post_record(tweet: dict, media_by_key: dict[str, dict], files: dict[str, Path]) -> dict:
    """One API v2 tweet (with its media looked up by key) as a post record."""
    attachments = tweet.get("attachments") or {}
    expanded = {m["media_key"]: m for m in attachments.get("media", []) if isinstance(m, dict) and "media_key" in m}
    keys = list(attachments.get("media_keys", [])) or list(expanded)
    media = []
    for key in keys:
        item = expanded.get(key) or media_by_key.get(key) or {}
        media.append({
            "media_key": key,
            "type": item.get("type", ""),
            # Photos carry `url`; videos and GIFs only a `preview_image_url`.
            "url": item.get("url", ""),
            "file": str(files[key]) if key in files else "",
        })
    entities = tweet.get("entities") or {}
    return {
        "id": str(tweet["id"]),
        "text": tweet["text"],
        "lang": tweet.get("lang", ""),
        "author_id": str(tweet.get("author_id", "")),
        "created_at": tweet.get("created_at", ""),
        "is_retweet": any(ref.get("type") == "retweeted" for ref in tweet.get("referenced_tweets") or []),
        "entities": {kind: entities.get(kind, []) for kind in ("hashtags", "urls", "mentions")},
        "media": media,
    }


def page_tweets(obj: dict) -> tuple[list[dict], dict[str, dict]] | None:
    """The tweets and media of one JSONL line, or None if it is neither a page nor a tweet."""
    if isinstance(obj.get("data"), list):
        media = {m["media_key"]: m for m in (obj.get("includes") or {}).get("media", []) if "media_key" in m}
        return obj["data"], media
    if isinstance(obj.get("data"), dict):  # a single-tweet lookup response
        media = {m["media_key"]: m for m in (obj.get("includes") or {}).get("media", []) if "media_key" in m}
        return [obj["data"]], media
    if "id" in obj and "text" in obj:
        return [obj], {}
    return None


def read_lines(lines: Iterable[tuple[str, str]], log: StageLog, files: dict[str, Path]) -> Iterator[dict]:
    """Records from `(where, line)` pairs (`where` names the line in rejections), duplicates rejected."""
    seen: set[str] = set()
    for where, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            log.reject(where, "malformed_json", str(err))
            continue
        found = page_tweets(obj) if isinstance(obj, dict) else None
        if found is None:
            log.reject(where, "unrecognized_line", "neither an API v2 page nor a tweet")
            continue
        tweets, media_by_key = found
        for tweet in tweets:
            if not isinstance(tweet, dict) or "id" not in tweet or "text" not in tweet:
                log.reject(where, "unrecognized_line", "tweet without id or text")
                continue
            record = post_record(tweet, media_by_key, files)
            if record["id"] in seen:
                log.reject(record["id"], "duplicate_id", f"seen before ({where})")
                continue
            seen.add(record["id"])
            log.keep()
            yield record


def jsonl_lines(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                yield f"{path.name}:{number}", line


def read_archive(directory: str | Path, log: StageLog) -> Iterator[dict]:
    """Every post of an archive directory: its `*.jsonl` files in name order, images from `media/`."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{directory} holds no *.jsonl file (twarc2 archive expected)")
    return read_lines(jsonl_lines(paths), log, media_files(directory))
