"""The one hook of the fault-injection tests: `CMKP_KILL_AT=<point>[:<n>]` makes the process SIGKILL itself the
n-th time (default 1st) it reaches `kill_point(<point>)`, as a power cut or an OOM killer would stop it."""
from __future__ import annotations

import os
import signal

KILL_ENV = "CMKP_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
