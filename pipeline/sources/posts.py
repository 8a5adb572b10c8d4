"""Plain posts to tag: JSONL or CSV rows of `id`, `text` and optionally `image` (a local path, relative to the
file's directory unless absolute, or an http(s) URL), and optionally `lang`.

`--input` is one file (`.jsonl` or `.csv`) or a directory of them (read in name order). Each row becomes a post
record of the shape the archive source gives (`pipeline.sources.archive.post_record`), its image as the one
photo of `media` (`file` for a path, `url` for a URL), so that every later stage treats it like a tweet.

Rejected rows (the stage log's reasons): `malformed_json` (a JSONL line that is not JSON), `unrecognized_line`
(not an object, or a CSV row with more fields than the header), `missing_id`, `empty_post` (no text and no
image), `duplicate_id` (an id read before). Rows without an id are named `file:line` in the log.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from pipeline.report import StageLog

SUFFIXES = (".jsonl", ".csv")


def post_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise ValueError(f"{path}: a posts file ends in .jsonl or .csv")
        return [path]
    files = sorted(p for p in path.glob("*") if p.is_file() and p.suffix.lower() in SUFFIXES) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{path} is neither a .jsonl/.csv posts file nor a directory holding one")
    return files


def _rows(path: Path, log: StageLog) -> Iterator[tuple[str, dict]]:
    """(where, row) pairs of one file; lines that are not rows are rejected here."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                where = f"{path.name}:{reader.line_num}"
                if None in row:                      # more fields than the header names
                    log.reject(where, "unrecognized_line", f"{len(row) - 1 + len(row[None])} fields, header has "
                                                          f"{len(reader.fieldnames)}")
                    continue
                yield where, {k: v for k, v in row.items() if v is not None}
            return
        for number, line in enumerate(f, 1):
            where = f"{path.name}:{number}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                log.reject(where, "malformed_json", str(err))
                continue
            if not isinstance(row, dict):
                log.reject(where, "unrecognized_line", f"a JSON {type(row).__name__}, not an object")
                continue
            yield where, row


def post_record(row: dict, base: Path) -> dict:
    image = str(row.get("image") or "").strip()
    media = []
    if image:
        is_url = "://" in image
        file = "" if is_url else str(Path(image) if Path(image).is_absolute() else base / image)
        media.append({"media_key": "image", "type": "photo", "url": image if is_url else "", "file": file})
    return {"id": str(row["id"]).strip(), "text": str(row.get("text") or ""), "lang": str(row.get("lang") or ""),
            "author_id": "", "created_at": "", "is_retweet": False,
            "entities": {"hashtags": [], "urls": [], "mentions": []}, "media": media}


def read_posts(path: str | Path, log: StageLog, base: str | Path | None = None) -> Iterator[dict]:
    """Every usable row of the posts file(s) as a post record, in file and row order. Relative image paths
    are taken from `base`, by default each file's own directory."""
    seen: set[str] = set()
    for file in post_files(path):
        for where, row in _rows(file, log):
            if not str(row.get("id") or "").strip():
                log.reject(where, "missing_id", "a row needs an id")
                continue
            record = post_record(row, Path(base) if base is not None else file.parent)
            if not record["text"].strip() and not record["media"]:
                log.reject(record["id"], "empty_post", f"no text and no image ({where})")
            elif record["id"] in seen:
                log.reject(record["id"], "duplicate_id", f"seen before ({where})")
            else:
                seen.add(record["id"])
                log.keep()
                yield record
