"""What makes an output safe to share between builds and to trust on a rerun: one writer at a time, and a
record of what it was built from.

- Lock: a task runs holding an exclusive lock on `OUT/work/locks/<output>.lock` (a POSIX record lock, which NFS
  carries across hosts; the kernel or the lock server drops it when its holder dies). Two builds started with
  local schedulers on one directory therefore never run the same task at once: the second waits, then finds the
  output complete and skips it. The workers of one central scheduler never contend for a lock (the scheduler
  gives each task to one worker), so it does not stop them sharing a directory from many hosts.
- Identity: before a task writes its output it records what the output is built from in
  `OUT/work/identity/<output>.json` (the significant parameters of the task and of everything it requires, with
  digests of inputs that a path does not identify). An output whose record differs from what a run asks for is
  refused with the parameters that differ, never silently reused. An output without a record (placed there by
  hand) is taken as it is.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from durable.atomic import remove_stale_temporaries, write_text

LOCKS = Path("work", "locks")
IDENTITIES = Path("work", "identity")


class StaleOutputError(RuntimeError):
    """An output exists but was built from other parameters or inputs than the run asks for."""


def _beside(root: Path, kind: Path, output: str | Path, suffix: str) -> Path:
    relative = Path(os.path.relpath(Path(output).resolve(), root.resolve()))
    if relative.parts and relative.parts[0] == "..":
        raise ValueError(f"{output} is outside the dataset directory {root}")
    return root / kind / f"{relative}{suffix}"


@contextmanager
def output_lock(root: str | Path, output: str | Path, waiting=lambda message: None) -> Iterator[None]:
    """Hold the exclusive lock of `output` (a path under the dataset directory `root`)."""
    path = _beside(Path(root), LOCKS, output, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            waiting(f"waiting for another build writing {output}")
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _flatten(identity: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in identity.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_identity(root: str | Path, output: str | Path, identity: dict) -> None:
    """Raise StaleOutputError if `output` was recorded as built from another identity."""
    path = _beside(Path(root), IDENTITIES, output, ".json")
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    if recorded == identity:
        return
    was, now = _flatten(recorded), _flatten(identity)
    differences = [f"{key}: built with {was.get(key, '(unset)')!r}, asked {now.get(key, '(unset)')!r}"
                   for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    raise StaleOutputError(
        f"{output} was built from other parameters or inputs ({'; '.join(differences)}). Build into another "
        f"--output, or delete it and every output after it (docs/reliability.md, 'Kills and reruns').")


def record_identity(root: str | Path, output: str | Path, identity: dict) -> None:
    path = _beside(Path(root), IDENTITIES, output, ".json")
    remove_stale_temporaries(path)  # the caller holds the output's lock
    text = json.dumps(identity, indent=1, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
