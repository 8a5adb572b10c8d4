"""Plain posts to tag: JSONL or CSV rows of `id`, `text` and optionally `image` (a local path, relative to the
file's directory unless absolute, or an http(s) URL), and optionally `lang`.

`--input` is one file (`.jsonl` or `.csv`) or a directory of them (read in name order). Each row becomes a post
record of the shape the archive source gives (`pipeline.sources.archive.post_record`), its image as the one
photo of `media` (`file` for a path, `url` for a URL), so that every later stage treats it like a tweet.

Lines are read through `pipeline.sources.records` (a length cap, strict UTF-8, guarded JSON) and every field is
type-checked, so a bad row is rejected and the rest are read. Rejected rows (the stage log's reasons): those of
`pipeline.sources.records` (`line_too_long`, `invalid_utf8`, `malformed_json`, `json_too_deep`,
`number_too_long`, `wrong_type` for an `id` that is not a string or an integer or a `text`/`image`/`lang` that
is not a string, `lone_surrogate`, `nul_character`), `not_an_object` (a JSONL line whose JSON is not an
object), `malformed_csv` (a CSV row csv cannot parse, e.g. a field over its size limit), `unrecognized_line`
(a CSV row with more fields than the header), `missing_id`, `empty_post` (no text and no image),
`duplicate_id` (an id read before). Rejected rows are named `file:line` in the log (an empty post or a
duplicate by its id).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from pipeline.report import StageLog
from pipeline.sources.records import BadRecord, capped_lines, field, json_objects, string_fault

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


def input_files(path: str | Path) -> list[Path]:
    """The posts files read from `path` (none where it holds none: reading it then fails, naming the path).
    The images the rows name are identified by their paths."""
    try:
        return post_files(path)
    except (FileNotFoundError, ValueError):
        return []


def _csv_lines(path: Path, log: StageLog, position: list[int]) -> Iterator[str]:
    """A CSV file's lines for csv.reader, read through `capped_lines`; a line too long or not UTF-8 is
    rejected here and left out. `position[0]`: the number of the last line handed out (csv's own count
    would skip the lines left out)."""
    for number, line in capped_lines(path):
        position[0] = number
        if isinstance(line, BadRecord):
            log.reject(f"{path.name}:{number}", line.reason, line.detail)
            continue
        yield line + "\n"


def _rows(path: Path, log: StageLog) -> Iterator[tuple[str, dict]]:
    """(where, row) pairs of one file; lines that are not rows are rejected here."""
    if path.suffix.lower() == ".csv":
        position = [0]
        reader = csv.DictReader(_csv_lines(path, log, position))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:  # a field over csv's size limit, an unterminated quote
                log.reject(f"{path.name}:{position[0]}", "malformed_csv", str(err))
                continue
            where = f"{path.name}:{position[0]}"
            if None in row:                      # more fields than the header names
                log.reject(where, "unrecognized_line", f"{len(row) - 1 + len(row[None])} fields, header has "
                                                      f"{len(reader.fieldnames)}")
                continue
            yield where, {k: v for k, v in row.items() if v is not None}
        return
    yield from json_objects(((f"{path.name}:{number}", line) for number, line in capped_lines(path)), log)


def post_record(row: dict, base: Path, where: str = "row") -> dict:
    """The post record of one row, or BadRecord: a field of the wrong type (`wrong_type`), a string that
    cannot be stored (`lone_surrogate`, `nul_character`)."""
    record_id = field(row, "id", (str, int), where, required=True)
    text, image, lang = (field(row, name, str, where, default="") for name in ("text", "image", "lang"))
    image = image.strip()
    media = []
    if image:
        is_url = "://" in image
        file = "" if is_url else str(Path(image) if Path(image).is_absolute() else base / image)
        media.append({"media_key": "image", "type": "photo", "url": image if is_url else "", "file": file})
    record = {"id": str(record_id).strip(), "text": text, "lang": lang, "author_id": "", "created_at": "",
              "is_retweet": False, "entities": {"hashtags": [], "urls": [], "mentions": []}, "media": media}
    if fault := string_fault(record):
        raise fault
    return record


def read_posts(path: str | Path, log: StageLog, base: str | Path | None = None) -> Iterator[dict]:
    """Every usable row of the posts file(s) as a post record, in file and row order. Relative image paths
    are taken from `base`, by default each file's own directory."""
    seen: set[str] = set()
    for file in post_files(path):
        for where, row in _rows(file, log):
            if not str(row.get("id") or "").strip():
                log.reject(where, "missing_id", "a row needs an id")
                continue
            try:
                record = post_record(row, Path(base) if base is not None else file.parent, where)
            except BadRecord as err:
                log.reject(where, err.reason, err.detail)
                continue
            if not record["text"].strip() and not record["media"]:
                log.reject(record["id"], "empty_post", f"no text and no image ({where})")
            elif record["id"] in seen:
                log.reject(record["id"], "duplicate_id", f"seen before ({where})")
            else:
                seen.add(record["id"])
                log.keep()
                yield record
