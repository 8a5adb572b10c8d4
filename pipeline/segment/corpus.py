"""Corpus files the statistics and the learned mappings come from: CMKP release `*_src.txt` or plain text."""
from __future__ import annotations

from pathlib import Path

from pipeline.sources.cmkp import SEP, parse_src_line
from pipeline.sources.records import BadRecord, capped_lines


def is_cmkp_src(path: Path) -> bool:
    """A CMKP release `*_src.txt` (`text<sep>kp1;kp2<sep>url` per line), judged by its first line."""
    with open(path, encoding="utf-8") as f:
        return f.readline().count(SEP) == 2


def read_cmkp_src(path: Path) -> list[tuple[str, list[str]]]:
    """(post text, keyphrases) per non-empty line of a CMKP `*_src.txt`; a malformed line is an error naming it."""
    posts = []
    for number, line in capped_lines(path):
        if isinstance(line, BadRecord):
            raise ValueError(f"{path}:{number}: {line.reason}: {line.detail}")
        if not line:
            continue
        try:
            text, keyphrases, _ = parse_src_line(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        posts.append((text, keyphrases))
    return posts


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(texts, segmented keyphrases) of a corpus file: a CMKP `*_src.txt` or plain text (one post per line)."""
    path = Path(path)
    if is_cmkp_src(path):
        posts = read_cmkp_src(path)
        return [text for text, _ in posts], [k for _, keyphrases in posts for k in keyphrases]
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()], []
