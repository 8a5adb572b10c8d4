"""Fault-injection cases: hostile input, dying servers and workers, kills. Every case runs under a wall-clock
limit (pytest-timeout) so a regression that hangs fails instead of stalling `make test`."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The fixtures shared with the rest of the suite (tests/text_archive_fixture.py) are imported by name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASE_TIMEOUT_S = 120


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CASE_TIMEOUT_S))
