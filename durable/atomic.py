"""Writing files so that a file or directory that exists is complete, after a kill or a power cut alike.

Everything the pipeline, the trainer and the workflows write goes to a temporary name beside its final one, is
flushed to disk (fsync of the file, or of every file of a directory), renamed, and the rename itself made durable (fsync of the parent
directory): without the fsyncs a power cut can leave an empty file under the final name, which would count as
complete. Temporary names hold the host, the process and a random part, so writers on many hosts sharing one
directory never collide; a killed writer's leftovers never look complete and are removed by the next writer of
the same output (`remove_stale_temporaries`, called under that output's lock).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from durable.faults import kill_point

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_directory(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory under `path`."""
    if not path.is_dir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, files in os.walk(path):
        for name in files:
            with open(Path(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def durable_replace(source: str | Path, path: str | Path) -> None:
    """Rename the finished file or directory `source` over `path` (in the same directory), durably: its data
    fsynced before, the rename itself after."""
    fsync_tree(Path(source))
    kill_point("before_rename")
    os.replace(source, path)
    fsync_directory(Path(path).parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path (not created) to write `path` at: made durable and renamed over `path` when the block
    succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        durable_replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A new temporary directory, renamed to `path` when the block succeeds and removed when it fails."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """An open file (binary, or UTF-8 text for a text `mode`) that appears at `path` complete or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove what killed writers of `path` left (only its owner may call this: a live writer's file goes too)."""
    path = Path(path)
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{path.name}{TMP_MARK}*"):
            _remove(leftover)
