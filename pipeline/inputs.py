"""What identifies a source's input files beyond their paths: their bytes, checked cheaply on every run.

The crawl stage of an archive, a CMKP release or posts files records the input path and every file its source
reads in `OUT/work/crawl/input-files.json` (inside the stage's atomic directory, so it exists exactly when the
stage is complete): the path relative to the input, size, mtime_ns and sha256. Every later run fingerprints the input
against that record before it trusts an output: a file whose size and mtime_ns are the recorded ones is taken as
unchanged (the quick check of make and rsync; a rewrite that keeps both is not seen), any other is hashed again.
Other bytes under a recorded path, or a file added or removed, refuse the run naming the files
(`StaleOutputError`); the same bytes under a new mtime (a copy, a `touch`, a regenerated corpus) are accepted and
the record's times refreshed. The digest of the paths and hashes is part of every output's identity
(`pipeline.guard`), which ties outputs to the input's bytes even where the record is gone.

A link to a file outside the input is never read (the sources refuse it): it is recorded as such, by the link's
own size and time. A file that cannot be read is recorded as unreadable (its stage rejects it the same way).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from durable.atomic import write_text
from pipeline.guard import StaleOutputError
from pipeline.shards import sha256_file

RECORD_NAME = "input-files.json"
OUTSIDE_INPUT = "outside_input"   # the "sha256" of a link leading out of the input (never read)
UNREADABLE = "unreadable"         # the "sha256" of a file that could not be read
SHOWN = 5                         # changed files named in the refusal


@dataclass(frozen=True)
class InputFile:
    path: str      # relative to the input directory (a posts file: to its own directory)
    size: int
    mtime_ns: int
    sha256: str


def read_record(path: Path, input_path: str) -> dict[str, InputFile]:
    """The recorded files of `input_path` by relative path; {} without a record or for another input (which the
    identity check refuses by its path)."""
    if not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    if record["input"] != input_path:
        return {}
    return {entry["path"]: InputFile(**entry) for entry in record["files"]}


def record_text(input_path: str, entries: Iterable[InputFile]) -> str:
    """JSON, one file a line."""
    files = ",\n".join(json.dumps(entry.__dict__, sort_keys=True) for entry in entries)
    return f'{{"input": {json.dumps(input_path)}, "files": [\n{files}\n]}}\n'


def fingerprint(name: str, file: Path, root_real: str, known: InputFile | None) -> InputFile | None:
    """The entry of `file` (`name` relative to the input): `known` again if its size and mtime_ns are unchanged,
    else hashed; None if it is gone. `root_real`: the input directory's real path (a link is followed only to a
    file inside it)."""
    try:
        st = os.lstat(file)
        inside = True
        if stat.S_ISLNK(st.st_mode):
            inside = os.path.commonpath([root_real, os.path.realpath(file)]) == root_real
            if inside:
                st = os.stat(file)
    except OSError:  # removed since it was listed, or a link loop: not part of the input
        return None
    if known is not None and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns):
        return known
    if not inside:
        sha256 = OUTSIDE_INPUT
    else:
        try:
            sha256 = sha256_file(file)
        except OSError:
            sha256 = UNREADABLE
    return InputFile(name, st.st_size, st.st_mtime_ns, sha256)


def describe_changes(was: dict[str, str], now: dict[str, str]) -> str:
    changes = [f"{name}: {'added' if name not in was else 'removed' if name not in now else 'other bytes'}"
               for name in sorted(set(was) | set(now)) if was.get(name) != now.get(name)]
    more = f"; and {len(changes) - SHOWN} more" if len(changes) > SHOWN else ""
    return "; ".join(changes[:SHOWN]) + more


class InputFiles:
    """The files a source reads from `input_path`, fingerprinted against the record in `stage_dir` (the crawl
    stage's output directory); raises StaleOutputError if they differ from it."""

    def __init__(self, input_path: str, files: list[Path], stage_dir: str | Path):
        self.input_path = input_path
        self.root = Path(input_path) if Path(input_path).is_dir() else Path(input_path).parent
        self.record = Path(stage_dir) / RECORD_NAME
        recorded = read_record(self.record, input_path)
        root_real, prefix = os.path.realpath(self.root), f"{self.root}{os.sep}"
        # the sources list files as paths under the input: their names are what follows its path (fast)
        names = (str(file)[len(prefix):] if str(file).startswith(prefix) else file.relative_to(self.root).as_posix()
                 for file in files)
        entries = (fingerprint(name, file, root_real, recorded.get(name)) for name, file in zip(names, files))
        self.entries = sorted((entry for entry in entries if entry is not None), key=lambda entry: entry.path)
        if not recorded:
            return
        was = {name: entry.sha256 for name, entry in recorded.items()}
        now = {entry.path: entry.sha256 for entry in self.entries}
        if was != now:
            raise StaleOutputError(
                f"the input {input_path} changed since {self.record.parent} was built from it "
                f"({describe_changes(was, now)}). Build into another --output, or delete it "
                f"(docs/reliability.md, 'Kills and reruns').")
        if sorted(recorded.values(), key=lambda entry: entry.path) != self.entries:
            write_text(self.record, record_text(input_path, self.entries))  # the same bytes with new times

    def digest(self) -> str:
        """The input's identity: a digest of its files' relative paths and hashes (not of their times)."""
        text = "".join(f"{entry.path}\0{entry.sha256}\n" for entry in self.entries)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def write(self, directory: Path) -> None:
        """Record the files in a stage directory being written (`directory / RECORD_NAME`)."""
        (directory / RECORD_NAME).write_text(record_text(self.input_path, self.entries), encoding="utf-8")
