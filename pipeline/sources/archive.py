"""twarc2 archives: JSONL files of X/Twitter API v2 response pages, or of already-flattened tweets.

A page line is `{"data": [tweet, ...], "includes": {"media": [...], "users": [...]}, "meta": {...}}`; a
flattened line is one tweet whose `attachments.media` holds the media objects themselves (twarc2 `flatten`).
Either way each tweet becomes one post record:

    id, text, lang, author_id, created_at, is_retweet,
    entities: {hashtags: [{start, end, tag}], urls: [...], mentions: [...]},
    media: [{media_key, type, url, file}]   (`file`: the archive's own copy in `media/<media_key>.<ext>`, or "")

Lines are read through `pipeline.sources.records` (a length cap, strict UTF-8, guarded JSON), and every field
a record is built from is type-checked, so hostile or corrupt input is rejected with a reason instead of
stopping the stage: the reasons of `pipeline.sources.records`, and `not_an_object` (a line whose JSON is not an
object), `unrecognized_line` (an object that is neither a page nor a tweet), `duplicate_id` (a tweet seen
before, in any file or page). A rejected tweet of a page is named by its id when it has a usable one, else by
`file:line#index`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.report import StageLog
from pipeline.sources.records import (BadRecord, capped_lines, field, json_objects, json_type, objects,
                                      string_fault)

ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
ENTITY_KINDS = ("hashtags", "urls", "mentions")
# Optional string fields of each entity kind, beyond the offsets every entity must have.
ENTITY_STRINGS = {"hashtags": ("tag",), "urls": ("display_url", "expanded_url", "media_key", "url"),
                  "mentions": ("username", "id")}


def media_files(directory: str | Path) -> dict[str, Path]:
    """`media/<media_key>.<ext>` files of an archive, by media key (any extension)."""
    media_dir = Path(directory) / "media"
    if not media_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(media_dir.iterdir()) if p.is_file()}


def input_files(directory: str | Path) -> list[Path]:
    """Every file an archive's posts are read from: its `*.jsonl` files and its `media/` files."""
    return [*sorted(Path(directory).glob("*.jsonl")), *media_files(directory).values()]


def tweet_id(tweet: dict, where: str) -> str:
    value = field(tweet, "id", (str, int), where, required=True)
    if isinstance(value, int) and value < 0 or isinstance(value, str) and not ID_RE.fullmatch(value):
        raise BadRecord("wrong_type", f"{where}.id {str(value)[:80]!r} is not a tweet id")
    return str(value)


def checked_entities(tweet: dict, where: str) -> dict[str, list[dict]]:
    """The hashtag, URL and mention entities, each with integer offsets and string fields."""
    entities = field(tweet, "entities", dict, where, default={})
    checked = {}
    for kind in ENTITY_KINDS:
        items = objects(entities, kind, f"{where}.entities")
        for index, item in enumerate(items):
            path = f"{where}.entities.{kind}[{index}]"
            for offset in ("start", "end"):
                field(item, offset, int, path, required=True)
            for name in ENTITY_STRINGS[kind]:
                field(item, name, str, path, required=kind == "hashtags")
        checked[kind] = items
    return checked


def checked_media(tweet: dict, where: str, media_by_key: dict[str, dict], includes_fault: str) -> list[dict]:
    """The tweet's media objects, in the order of its media keys (strings), from its own expanded media or
    the page's (`media_by_key`); {} for a key found in neither."""
    attachments = field(tweet, "attachments", dict, where, default={})
    path = f"{where}.attachments"
    keys = field(attachments, "media_keys", list, path, default=[])
    for index, key in enumerate(keys):
        if not isinstance(key, str):
            raise BadRecord("wrong_type", f"{path}.media_keys[{index}] is {json_type(key)}, expected a string")
    expanded = {}
    for index, item in enumerate(objects(attachments, "media", path)):
        expanded[checked_media_item(item, f"{path}.media[{index}]")] = item
    keys = keys or list(expanded)
    if includes_fault and any(key not in expanded and key not in media_by_key for key in keys):
        raise BadRecord("wrong_type", f"{where}'s media cannot be looked up: {includes_fault}")
    return [{"media_key": key, **(expanded.get(key) or media_by_key.get(key) or {})} for key in keys]


def checked_media_item(item: dict, where: str) -> str:
    key = field(item, "media_key", str, where, required=True)
    for name in ("type", "url"):
        field(item, name, str, where)
    return key


def post_record(tweet: dict, media_by_key: dict[str, dict], files: dict[str, Path], where: str = "tweet",
                includes_fault: str = "") -> dict:
    """One API v2 tweet (with its media looked up by key) as a post record, or BadRecord if a field it is
    built from has the wrong type or is missing. `includes_fault`: why the page's media expansions could not
    be read (a tweet that needs them is then rejected)."""
    record_id = tweet_id(tweet, where)
    text = field(tweet, "text", str, where, required=True)
    references = objects(tweet, "referenced_tweets", where)
    for index, reference in enumerate(references):
        field(reference, "type", str, f"{where}.referenced_tweets[{index}]")
    media = [{
        "media_key": item["media_key"],
        "type": item.get("type") or "",
        # Photos carry `url`; videos and GIFs only a `preview_image_url`.
        "url": item.get("url") or "",
        "file": str(files[item["media_key"]]) if item["media_key"] in files else "",
    } for item in checked_media(tweet, where, media_by_key, includes_fault)]
    record = {
        "id": record_id,
        "text": text,
        "lang": field(tweet, "lang", str, where, default=""),
        "author_id": str(field(tweet, "author_id", (str, int), where, default="")),
        "created_at": field(tweet, "created_at", str, where, default=""),
        "is_retweet": any(ref.get("type") == "retweeted" for ref in references),
        "entities": checked_entities(tweet, where),
        "media": media,
    }
    if fault := string_fault(record):
        raise fault
    return record


def page_tweets(obj: dict) -> tuple[list, dict[str, dict], str] | None:
    """The tweets, the media expansions by key and why those could not be read ("" if they could) of one
    JSONL object, or None if it is neither a page nor a tweet."""
    if isinstance(obj.get("data"), (list, dict)):
        tweets = obj["data"] if isinstance(obj["data"], list) else [obj["data"]]  # dict: a one-tweet lookup
        media: dict[str, dict] = {}
        try:
            for index, item in enumerate(objects(field(obj, "includes", dict, "", default={}), "media", "includes")):
                media[checked_media_item(item, f"includes.media[{index}]")] = item
        except BadRecord as err:
            return tweets, media, err.detail
        return tweets, media, ""
    if "id" in obj and "text" in obj:
        return [obj], {}, ""
    return None


def read_lines(lines: Iterable[tuple[str, str | BadRecord]], log: StageLog, files: dict[str, Path]
               ) -> Iterator[dict]:
    """Records from `(where, line)` pairs (`where` names the line in rejections; a BadRecord in place of the
    line is rejected with its reason), duplicates rejected."""
    seen: set[str] = set()
    for where, obj in json_objects(lines, log):
        found = page_tweets(obj)
        if found is None:
            log.reject(where, "unrecognized_line", "neither an API v2 page nor a tweet")
            continue
        tweets, media_by_key, includes_fault = found
        for index, tweet in enumerate(tweets):
            name = f"{where}#{index}" if len(tweets) > 1 or "data" in obj else where
            if not isinstance(tweet, dict):
                log.reject(name, "wrong_type", f"the tweet is {json_type(tweet)}, expected an object")
                continue
            try:
                record = post_record(tweet, media_by_key, files, "tweet", includes_fault)
            except BadRecord as err:
                usable_id = isinstance(tweet.get("id"), str) and ID_RE.fullmatch(tweet["id"])
                log.reject(tweet["id"] if usable_id else name, err.reason, f"{err.detail} ({name})")
                continue
            if record["id"] in seen:
                log.reject(record["id"], "duplicate_id", f"seen before ({where})")
                continue
            seen.add(record["id"])
            log.keep()
            yield record


def jsonl_lines(paths: Iterable[Path]) -> Iterator[tuple[str, str | BadRecord]]:
    for path in paths:
        for number, line in capped_lines(path):
            yield f"{path.name}:{number}", line


def read_archive(directory: str | Path, log: StageLog) -> Iterator[dict]:
    """Every post of an archive directory: its `*.jsonl` files in name order, images from `media/`."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{directory} holds no *.jsonl file (twarc2 archive expected)")
    return read_lines(jsonl_lines(paths), log, media_files(directory))
