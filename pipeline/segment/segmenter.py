"""The hashtag segmenter: mappings first, then the search (with the reranker's choice where it was trained)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.segment.config import SegmenterConfig
from pipeline.segment.corpus import read_cmkp_src, read_corpus
from pipeline.segment.counts import ALNUM, mixed_counts
from pipeline.segment.features import WordStats
from pipeline.segment.mappings import default_mapping_file, learn_mappings, mapping_key, read_mapping_file
from pipeline.segment.reranker import Reranker, reranker_examples
from pipeline.segment.search import CountsSegmenter

# CamelCase parts: an acronym before a capitalised word (BTSArmy -> BTS, Army), a capitalised or lowercase
# word, an all-caps run, a number
CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


class HashtagSegmenter:
    """`segment(hashtag)` -> lowercase words joined by single spaces (memoised per distinct input)."""

    def __init__(self, viterbi: CountsSegmenter, mappings: Mapping[str, str], reranker: Reranker | None = None,
                 stats: WordStats | None = None, candidates: int = 10, memo_size: int = 1 << 18):
        self.viterbi = viterbi
        self.mappings = dict(mappings)
        self.reranker, self.stats, self.candidates = reranker, stats, candidates
        self.segment = lru_cache(maxsize=memo_size)(self._segment)

    def split(self, text: str) -> list[str]:
        """The words of a lowercase ASCII run: the search's best, or the reranker's choice among its candidates."""
        if self.reranker is None:
            return self.viterbi.find_segment(text)[1]
        candidates = self.viterbi.candidates(text, self.candidates)
        return candidates[0][1] if len(candidates) == 1 else self.reranker.choose(candidates, self.viterbi.Pw,
                                                                                  self.stats)

    def _segment(self, hashtag: str) -> str:
        key = mapping_key(hashtag)
        if key in self.mappings:
            return self.mappings[key]
        body = hashtag.strip().lstrip("#")
        words: list[str] = []
        # underscores and other punctuation separate words; CamelCase only where the chunk has mixed case
        for chunk in ALNUM.findall(body):
            if not chunk.isascii():  # the statistics are English: a chunk with other letters stays one word
                words.append(chunk.lower())
                continue
            mixed_case = chunk != chunk.lower() and chunk != chunk.upper()
            for part in (CAMEL_PART.findall(chunk) if mixed_case else [chunk]):
                part = part.lower()
                words.extend(self.mappings[part].split() if part in self.mappings else self.split(part))
        return " ".join(words)


def build_segmenter(corpus_texts: Iterable[str] = (), stats_from: Iterable[str | Path] = (),
                    learn_from: Iterable[str | Path] = (), mappings: Iterable[str | Path] | None = None,
                    config: SegmenterConfig | None = None, rerank: bool | None = None) -> HashtagSegmenter:
    """A hashtag segmenter over web counts mixed with wordfreq, corpus and keyphrase counts.

    corpus_texts: raw or tokenized post texts whose words are mixed into the statistics.
    stats_from: corpus files (plain text, or CMKP `*_src.txt` whose keyphrases also feed the lexicon).
    learn_from: CMKP `*_src.txt` files whose segmented keyphrases become mapping entries.
    mappings: TSV files of hand-curated entries; they win over everything (later files over earlier ones).
        None: the project's own list (`default_mapping_file()`); () for none.
    config: the statistics' mix and the search's calibration; None: `SegmenterConfig()`.
    rerank: choose among the search's candidates with a reranker trained on the learn-from keyphrases
        (`reranker_examples`); None: whenever learn_from gives it `config.rerank_min_examples` examples.
        The learn-from files then also join the statistics (texts and keyphrases), the way the training folds saw
        them.
    """
    config = SegmenterConfig() if config is None else config
    learn_posts = [post for path in learn_from for post in read_cmkp_src(Path(path))]
    rerank_asked = rerank
    rerank = bool(learn_posts) if rerank is None else rerank
    learn_files = {Path(path).resolve() for path in learn_from}
    texts = list(corpus_texts)
    keyphrases: list[str] = []
    for path in stats_from:
        if rerank and Path(path).resolve() in learn_files:
            continue  # joins below, after the training folds (which must not count it whole)
        file_texts, file_keyphrases = read_corpus(Path(path))
        texts += file_texts
        keyphrases += file_keyphrases
    learned: dict[str, str] = {}
    for path in learn_from:
        learned.update(learn_mappings(k for _, ks in read_cmkp_src(Path(path)) for k in ks))
    manual: dict[str, str] = {}
    for path in (default_mapping_file(),) if mappings is None else mappings:
        manual.update(read_mapping_file(Path(path)))

    reranker = stats = None
    if rerank:
        examples, skipped = reranker_examples(texts, keyphrases, learn_posts, manual, config)
        if len(examples) >= config.rerank_min_examples:
            reranker = Reranker.fit([(features, index) for _, features, index in examples], config.rerank_l2)
        elif rerank_asked:
            raise ValueError(f"the learn-from keyphrases give the reranker {len(examples)} examples, fewer than "
                             f"{config.rerank_min_examples}; keys left out: {dict(skipped)}")
        texts += [text for text, _ in learn_posts]
        keyphrases += [keyphrase for _, post_keyphrases in learn_posts for keyphrase in post_keyphrases]
        stats = WordStats(texts, keyphrases, learned)
    unigrams, bigrams = mixed_counts(texts, keyphrases, config)
    viterbi = CountsSegmenter(unigrams, bigrams, config)
    return HashtagSegmenter(viterbi, {**learned, **manual}, reranker, stats, config.candidates)
