"""The CMKP release format (Wang et al. 2020, github.com/yuewang-cuhk/CMKP).

A release directory holds per split `{split}_src.txt` (`post tokens<sep>kp1;kp2;...<sep>image_url`, one post
per line) and optionally the line-aligned `{split}_ocr.txt` (raw Tesseract text), `{split}_ocr_final.txt`
(cleaned OCR tokens) and `{split}_attribute_cleaned.txt` (top-5 image attributes), and optionally an
`images/` directory of image files named by the basename of each post's image URL (the authors' `*_url_map`
keys images by file name; see `pipeline.text_tasks.ReleaseImages`). Its text is already tokenized, its
keyphrases already segmented and its splits fixed: records are carried as they are.

Lines are read through `pipeline.sources.records.capped_lines`: a line of any file that is too long or not
UTF-8, or a post holding U+0000, is rejected with that reason (`line_too_long`, `invalid_utf8`,
`nul_character`), and the files stay aligned line by line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.report import StageLog
from pipeline.shards import SPLITS
from pipeline.sources.records import BadRecord, capped_lines, string_fault

SEP = "<sep>"
IMAGE_DIR = "images"  # optional: image files named by the basename of each post's image URL
# Feature group of the shard format -> release files carrying it (dataset name -> file suffix).
RELEASE_FEATURES = {
    "ocr": {"ocr_raw": "ocr", "ocr_tokens": "ocr_final"},
    "attributes": {"attributes": "attribute_cleaned"},
}


def release_splits(directory: str | Path) -> list[str]:
    """Splits present in a release directory, in train/valid/test order."""
    directory = Path(directory)
    splits = [s for s in SPLITS if (directory / f"{s}_src.txt").is_file()]
    if not splits:
        raise FileNotFoundError(f"{directory} holds no CMKP release file ({', '.join(s + '_src.txt' for s in SPLITS)})")
    return splits


def release_image_files(directory: str | Path) -> dict[str, Path]:
    """The release's own image files (`images/` in the release directory), by file name; {} if it has none."""
    images = Path(directory) / IMAGE_DIR
    if not images.is_dir():
        return {}
    return {p.name: p for p in sorted(images.iterdir()) if p.is_file()}


def input_files(directory: str | Path) -> list[Path]:
    """Every file a release's posts are read from: each split's `_src.txt` and side files, and `images/`."""
    suffixes = ["src", *(suffix for columns in RELEASE_FEATURES.values() for suffix in columns.values())]
    files = (Path(directory) / f"{split}_{suffix}.txt" for split in SPLITS for suffix in suffixes)
    return [*(path for path in files if path.is_file()), *release_image_files(directory).values()]


def release_feature_groups(directory: str | Path, split: str) -> list[str]:
    """Feature groups the release carries for a split: a group counts if any of its files is present."""
    directory = Path(directory)
    return [group for group, files in RELEASE_FEATURES.items()
            if any((directory / f"{split}_{suffix}.txt").is_file() for suffix in files.values())]


def _read_lines(path: Path) -> list[str | BadRecord]:
    # Lines end at "\n" only: a stray carriage return inside a line must not split it and break the alignment.
    return [line for _, line in capped_lines(path)]


def parse_src_line(line: str) -> tuple[str, list[str], str]:
    """(text, keyphrases, image URL) of one `{split}_src.txt` line, each field stripped, each keyphrase's
    whitespace collapsed and empty keyphrases dropped; a ValueError if the line is not three fields."""
    fields = line.split(SEP)
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields separated by {SEP}, got {len(fields)}")
    text, keyphrase_field, image_url = (field.strip() for field in fields)
    return text, [" ".join(kp.split()) for kp in keyphrase_field.split(";") if kp.strip()], image_url


def read_release(directory: str | Path, log: StageLog) -> Iterator[dict]:
    """Yield one record per usable line of every split; malformed lines are rejected into `log`.

    Record ids are `cmkp-{split}-{line}` with the 0-based line index in `{split}_src.txt`.
    """
    directory = Path(directory)
    for split in release_splits(directory):
        src = _read_lines(directory / f"{split}_src.txt")
        extra: dict[str, list[str | BadRecord]] = {}
        files = {}
        for group in release_feature_groups(directory, split):
            for column, suffix in RELEASE_FEATURES[group].items():
                path = directory / f"{split}_{suffix}.txt"
                lines = _read_lines(path) if path.is_file() else [""] * len(src)
                if len(lines) != len(src):
                    # Misaligned side files would attach one post's OCR to another: refuse outright.
                    raise ValueError(f"{path} has {len(lines)} lines but {split}_src.txt has {len(src)}")
                extra[column], files[column] = lines, path.name
        for index, line in enumerate(src):
            record_id = f"cmkp-{split}-{index}"
            unreadable = [(f"{split}_src.txt", line)] + [(files[c], lines[index]) for c, lines in extra.items()]
            if bad := next(((name, value) for name, value in unreadable if isinstance(value, BadRecord)), None):
                log.reject(record_id, bad[1].reason, f"{bad[0]} line {index + 1}: {bad[1].detail}")
                continue
            try:
                text, keyphrases, image_url = parse_src_line(line)
            except ValueError as error:
                log.reject(record_id, "malformed_line", str(error))
                continue
            if not text:
                log.reject(record_id, "empty_text", "")
                continue
            if not keyphrases:
                log.reject(record_id, "no_keyphrase", line.split(SEP)[1].strip())
                continue
            record = {
                "id": record_id,
                "split": split,
                "text": text,
                "tokens": " ".join(text.split()),
                "keyphrases": keyphrases,
                "hashtags": [],
                "image_url": image_url,
            }
            record.update({column: " ".join(lines[index].split()) if column != "ocr_raw" else lines[index].strip()
                           for column, lines in extra.items()})
            if fault := string_fault(record):
                log.reject(record_id, fault.reason, fault.detail)
                continue
            log.keep()
            yield record
