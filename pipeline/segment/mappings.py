"""Mapping entries (hashtag key -> its words): the hand-curated list and the ones learned from keyphrases.

The project's list is read from the checkout (`data/`, also what an editable install sees) or, in an installed
package, from `<prefix>/share/cmkp/`, where setup.cfg's `[options.data_files]` puts it (`default_mapping_file`).
"""
from __future__ import annotations

import site
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from pipeline.segment.counts import ALNUM

MAPPING_FILE_NAME = "hashtag_segmentation.tsv"


def mapping_key(hashtag: str) -> str:
    """The lookup key of a hashtag: without `#`, lowercase, nothing but letters and digits."""
    return "".join(ALNUM.findall(hashtag.lower()))


def default_mapping_file() -> Path:
    """The project's hand-curated mapping list: `data/` of the checkout this package sits in (a clone or an editable
    install), else the copy an installed wheel put under `<prefix>/share/cmkp/` (setup.cfg `[options.data_files]`;
    prefix: the environment's, or the user base of a `pip install --user`). Missing everywhere: an error naming
    the places looked at."""
    checkout = Path(__file__).resolve().parents[2]
    candidates = [checkout / "data" / MAPPING_FILE_NAME,
                  *(Path(prefix) / "share" / "cmkp" / MAPPING_FILE_NAME
                    for prefix in dict.fromkeys((sys.prefix, site.getuserbase())))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"the project's hashtag mapping list {MAPPING_FILE_NAME} is in none of: "
                            + ", ".join(map(str, candidates)) + " (reinstall the cmkp package)")


def read_mapping_file(path: Path) -> dict[str, str]:
    """A TSV of `hashtag<TAB>segmentation`; lines starting with `# ` are comments.

    The segmentation must spell the hashtag (same letters and digits in order); anything else is an error that
    names the line, so a typo cannot silently change a hashtag into another.
    """
    mapping = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("# "):
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected hashtag<TAB>segmentation, got {line!r}")
            key, words = mapping_key(fields[0]), ALNUM.findall(fields[1].lower())
            if not key or "".join(words) != key:
                raise ValueError(f"{path}:{number}: segmentation {fields[1]!r} does not spell {fields[0]!r}")
            mapping[key] = " ".join(words)
    return mapping


def learn_mappings(keyphrases: Iterable[str]) -> dict[str, str]:
    """Mapping entries from already segmented keyphrases: key = keyphrase without spaces.

    Where one key was segmented several ways (`spiderman` / `spider man`), the most frequent one wins
    (ties: the first seen).
    """
    seen: dict[str, Counter] = {}
    for keyphrase in keyphrases:
        words = ALNUM.findall(keyphrase.lower())
        if words:
            seen.setdefault("".join(words), Counter())[" ".join(words)] += 1
    return {key: counts.most_common(1)[0][0] for key, counts in seen.items()}
