"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import luigi
import pytest

# the authors' real validation split, where this machine has it (a link next to the checkout; never committed)
REAL_RELEASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cmkp"


@pytest.fixture
def set_luigi_config():
    """`set_luigi_config({section: {option: value}})` sets luigi config options for one test; afterwards each
    option is restored to what it was (removed again where it was absent), so no test leaks its settings."""
    config = luigi.configuration.get_config()
    saved: dict[tuple[str, str], str | None] = {}

    def override(values: dict[str, dict[str, object]]) -> None:
        for section, options in values.items():
            if not config.has_section(section):
                config.add_section(section)
            for option, value in options.items():
                saved.setdefault((section, option), config.get(section, option, None))
                config.set(section, option, str(value))

    yield override
    for (section, option), value in saved.items():
        if value is None:
            config.remove_option(section, option)
        else:
            config.set(section, option, value)


@pytest.fixture
def real_release() -> Path:
    """The directory of the real CMKP release files (`valid_src.txt`, ...); the test is skipped where it is absent."""
    if not (REAL_RELEASE / "valid_src.txt").exists():
        pytest.skip(f"real CMKP data not found at {REAL_RELEASE.resolve()} (../shared/data/cmkp)")
    return REAL_RELEASE
