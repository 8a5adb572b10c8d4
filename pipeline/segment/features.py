"""What the reranker knows about one candidate segmentation: its features, by name.

The search sees the count sources only in their fixed mix; `WordStats` keeps them one by one, so that learned
weights can mix them differently.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from pipeline.segment.counts import NGRAM_SEP, count_words, is_lone_letter, web_counts, wordfreq_frequencies

# wordfreq's frequencies are shares (they sum to about 1); its smallest is about 1e-8: unknown words are estimated as
# if it were counts over 1e8 words
WORDFREQ_LOG10_TOTAL = 8.0
# a word of two or more letters without one of these is an acronym (`nh`, `bts`, `fcb`)
VOWELS = frozenset("aeiouy")
# the names `candidate_features` returns, in the column order of a feature matrix
FEATURES = ("search log10 P", "words", "lone letters", "lone a or i", "letter-digit cuts", "unknown words",
            "web log10 P", "wordfreq log10 P", "corpus log10 P", "lexicon log10 P", "lexicon words", "lexicon pairs",
            "corpus pairs", "web pairs", "wordfreq-only words", "longest word share", "two-letter words",
            "search's best", "learned keys split", "learned pairs glued", "vowel-less words")
_FEATURE_NAMES = frozenset(FEATURES)


class WordStats:
    """The count sources one by one (the search sees only their fixed mix) and the learned mappings: what the
    reranker's features look a candidate's words up in. Corpus and keyphrase-lexicon counts are raw counts."""

    def __init__(self, texts: Iterable[str], keyphrases: Iterable[str], learned: Mapping[str, str]):
        self.web_unigrams, self.web_bigrams = web_counts()
        self.frequencies = wordfreq_frequencies()
        self.corpus_unigrams, self.corpus_bigrams = count_words(texts)
        self.lexicon_unigrams, self.lexicon_bigrams = count_words(keyphrases)
        self.learned = dict(learned)
        # log10 of each count source's total (wordfreq's frequencies sum to about 1)
        self.log10_totals = [math.log10(sum(table.values()) + 1)
                             for table in (self.web_unigrams, self.corpus_unigrams, self.lexicon_unigrams)]

    @staticmethod
    def log10_probability(word: str, table: Mapping[str, float], log10_total: float,
                          log10_unknown_total: float) -> float:
        """log10 P(word) in one source: count / total, or for a word it lacks ekphrasis's unknown-word estimate
        10 / (total x 10^len), so that gluing letters into a longer unknown word costs more."""
        count = table.get(word)
        return math.log10(count) - log10_total if count else 1 - log10_unknown_total - len(word)

    @classmethod
    def log10_sequence_probability(cls, words: list[str], unigrams: Mapping[str, int], bigrams: Mapping[str, int],
                                   log10_total: float) -> float:
        """log10 P(words) in one count source as ekphrasis scores a segmentation: P(word | previous word) =
        count(pair) / count(previous) where the pair was seen, else P(word)."""
        logp = cls.log10_probability(words[0], unigrams, log10_total, log10_total)
        for previous, word in zip(words, words[1:]):
            pair = bigrams.get(previous + NGRAM_SEP + word)
            logp += (math.log10(pair / unigrams[previous]) if pair
                     else cls.log10_probability(word, unigrams, log10_total, log10_total))
        return logp


def candidate_features(words: list[str], logp: float, rank: int, known: Mapping[str, int],
                       stats: WordStats) -> dict[str, float]:
    """The features of one candidate segmentation by name (`FEATURES`): its words, its log10 P and rank in the
    search, `known` the search's unigram table.

    Each count source separately (web, wordfreq, corpus, keyphrase lexicon) as log10 probabilities and word-pair
    hits, so that learned weights can mix them unlike the search's fixed shares; the labels' conventions
    that no count expresses (lone letters, digits cut from letters, short words, acronyms: words without a vowel,
    which the counts score as rare while the labels cut them off as words of their own, `nh politics`); and what the
    learned mappings say about the candidate's parts (a word the training keyphrases split, two words they glue)."""
    text = "".join(words)
    pairs = [first + NGRAM_SEP + second for first, second in zip(words, words[1:])]
    letter_digit_cuts, position = 0, 0
    for word in words[:-1]:
        position += len(word)
        letter_digit_cuts += text[position - 1].isdigit() != text[position].isdigit()
    web_total, corpus_total, lexicon_total = stats.log10_totals
    learned, log10_probability = stats.learned, stats.log10_probability
    return {
        "search log10 P": logp,
        "words": len(words),
        "lone letters": sum(map(is_lone_letter, words)),
        "lone a or i": sum(word in ("a", "i") for word in words),
        "letter-digit cuts": letter_digit_cuts,
        "unknown words": sum(word not in known for word in words),
        "web log10 P": sum(log10_probability(word, stats.web_unigrams, web_total, web_total) for word in words),
        "wordfreq log10 P": sum(log10_probability(word, stats.frequencies, 0.0, WORDFREQ_LOG10_TOTAL)
                                for word in words),
        "corpus log10 P": stats.log10_sequence_probability(words, stats.corpus_unigrams, stats.corpus_bigrams,
                                                           corpus_total),
        "lexicon log10 P": stats.log10_sequence_probability(words, stats.lexicon_unigrams, stats.lexicon_bigrams,
                                                            lexicon_total),
        "lexicon words": sum(word in stats.lexicon_unigrams for word in words),
        "lexicon pairs": sum(pair in stats.lexicon_bigrams for pair in pairs),
        "corpus pairs": sum(pair in stats.corpus_bigrams for pair in pairs),
        "web pairs": sum(pair in stats.web_bigrams for pair in pairs),
        "wordfreq-only words": sum(word in stats.frequencies and word not in stats.web_unigrams for word in words),
        "longest word share": max(map(len, words)) / len(text),
        "two-letter words": sum(len(word) == 2 for word in words),
        "search's best": rank == 0,
        "learned keys split": sum(" " in learned.get(word, "") for word in words),
        "learned pairs glued": sum(learned.get(first + second, f"{first} {second}") != f"{first} {second}"
                                   for first, second in zip(words, words[1:])),
        "vowel-less words": sum(len(word) > 1 and word.isalpha() and not VOWELS.intersection(word)
                                for word in words),
    }


def feature_matrix(candidates: list[Mapping[str, float]]) -> np.ndarray:
    """The features of a candidate list as [candidates, FEATURES], columns in `FEATURES` order; a candidate whose
    names are not exactly `FEATURES` is an error (a renamed or added feature cannot land in another's column)."""
    for features in candidates:
        if features.keys() != _FEATURE_NAMES:
            raise ValueError(f"features {sorted(features)} are not the reranker's {sorted(FEATURES)}")
    return np.array([[features[name] for name in FEATURES] for features in candidates], dtype=float)
