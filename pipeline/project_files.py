"""Files the project ships beside its packages, and the project's Luigi settings read from any working directory.

A shipped file is read from the checkout this package sits in (a clone, or what an editable install sees) or, in
an installed package, from `<prefix>/share/cmkp/`, where setup.cfg's `[options.data_files]` puts it (prefix: the
environment's, or the user base of a `pip install --user`).
"""
from __future__ import annotations

import configparser
import site
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
LUIGI_CONFIG = "luigi.cfg"


def project_file(relative: str) -> Path:
    """The shipped file `relative` (a path inside the checkout); missing everywhere: an error naming the places
    looked at."""
    name = Path(relative).name
    candidates = [CHECKOUT / relative, *(Path(prefix) / "share" / "cmkp" / name
                                         for prefix in dict.fromkeys((sys.prefix, site.getuserbase())))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"the project's file {name} is in none of: " + ", ".join(map(str, candidates))
                            + " (reinstall the cmkp package)")


def read_project_luigi_config() -> None:
    """Give the project's luigi.cfg (exit codes, resources, suite sizes) to Luigi wherever it runs, as the
    lowest-priority settings: only options that no other source set are taken from it, so the working
    directory's luigi.cfg, /etc/luigi, LUIGI_CONFIG_PATH and values already set in code still win.

    Luigi reads luigi.cfg only from the working directory; the `luigi` command imports `--module` while it parses
    its arguments, before it reads its `[retcode]` section, so settings given here on import count for it."""
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not isinstance(config, configparser.ConfigParser):
        return  # LUIGI_CONFIG_PARSER=toml: Luigi reads only .toml files, which this project does not ship
    project = configparser.ConfigParser(interpolation=None)
    project.read(project_file(LUIGI_CONFIG), encoding="utf-8")
    for section in project.sections():
        if not config.has_section(section):
            config.add_section(section)
        for option, value in project.items(section, raw=True):
            if not config.has_option(section, option):
                config.set(section, option, value)
