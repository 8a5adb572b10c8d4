"""Mapping entries (hashtag key -> its words): the hand-curated list and the ones learned from keyphrases.

The project's list is read from the checkout (`data/`, also what an editable install sees) or, in an installed
package, from `<prefix>/share/cmkp/`, where setup.cfg's `[options.data_files]` puts it (`default_mapping_file`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from pipeline.project_files import project_file
from pipeline.segment.counts import ALNUM

MAPPING_FILE_NAME = "hashtag_segmentation.tsv"


def mapping_key(hashtag: str) -> str:
    """The lookup key of a hashtag: without `#`, lowercase, nothing but letters and digits."""
    return "".join(ALNUM.findall(hashtag.lower()))


def default_mapping_file() -> Path:
    """The project's hand-curated mapping list: `data/` of the checkout, else an installed package's copy
    (`pipeline.project_files.project_file`)."""
    return project_file(f"data/{MAPPING_FILE_NAME}")


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
