"""Word count tables: the web counts, wordfreq, and a corpus's own words, mixed in fixed shares.

Tables are keyed as ekphrasis keys them: a word, or two words joined by `NGRAM_SEP` (`save_hakeem`).
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.segment.config import SegmenterConfig

# ekphrasis joins bigram keys with "_" (ekphrasis.classes.segmenter.NGRAM_SEP)
NGRAM_SEP = "_"
# not words of running text: placeholders of preprocessed text (<user>, <url>, <number>), URLs, mentions, and
# hashtags (counting `savehakeem` as a word would vote for leaving the hashtags unsegmented)
NOT_WORDS = re.compile(r"<[a-z_]+>|https?://\S+|[@#][^\W]+")
WORD = re.compile(r"[a-z0-9]+")
# letters and digits of any script: what a hashtag is made of (underscores and punctuation separate words)
ALNUM = re.compile(r"[^\W_]+")


@lru_cache(maxsize=1)
def web_counts() -> tuple[dict[str, int], dict[str, int]]:
    """Unigram and bigram counts of the Google web corpus shipped inside the `wordsegment` wheel (read once)."""
    import wordsegment

    root = Path(wordsegment.__file__).parent
    unigrams: dict[str, int] = {}
    with open(root / "unigrams.txt", encoding="utf-8") as f:
        for line in f:
            word, count = line.split("\t")
            unigrams[word] = int(count)
    bigrams: dict[str, int] = {}
    with open(root / "bigrams.txt", encoding="utf-8") as f:
        for line in f:
            pair, count = line.split("\t")
            bigrams[pair.replace(" ", NGRAM_SEP)] = int(count)
    return unigrams, bigrams


@lru_cache(maxsize=1)
def wordfreq_frequencies() -> dict[str, float]:
    """wordfreq's large English list, letters and digits only (multi-digit numbers are folded to `00`...)."""
    import wordfreq

    return {word: frequency for word, frequency in wordfreq.get_frequency_dict("en", "large").items()
            if WORD.fullmatch(word)}


@lru_cache(maxsize=1 << 16)
def number_frequency(token: str) -> float:
    """wordfreq's estimate for a token with digits (`19`, `116th`); it spreads `00`'s mass over the numbers."""
    import wordfreq

    return wordfreq.word_frequency(token, "en", "large")


def text_words(text: str) -> list[str]:
    """Lowercase ASCII letter/digit words of a raw or tokenized text (placeholders, URLs, mentions, hashtags and
    words with other letters dropped: the search only sees ASCII)."""
    return [word for word in ALNUM.findall(NOT_WORDS.sub(" ", text.lower())) if word.isascii()]


def count_words(texts: Iterable[str]) -> tuple[Counter, Counter]:
    """Unigram and bigram (ekphrasis key format `a_b`) counts of texts."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        words = text_words(text)
        unigrams.update(words)
        bigrams.update(a + NGRAM_SEP + b for a, b in zip(words, words[1:]))
    return unigrams, bigrams


def mix_into(unigrams: dict[str, int], bigrams: dict[str, int], source_unigrams: Mapping[str, float],
             source_bigrams: Mapping[str, float], scale: float) -> None:
    """Add a source's counts times scale, in place (a count that rounds to 0 adds nothing: no zero entries)."""
    for table, source in ((unigrams, source_unigrams), (bigrams, source_bigrams)):
        for key, count in source.items():
            if scaled := round(count * scale):
                table[key] = table.get(key, 0) + scaled


def share_scale(source_total: float, weight: float, web_total: int) -> float:
    """The factor that makes a source's total `weight` x the web total: sources of any size mix in fixed
    proportions (0 for an empty source)."""
    return weight * web_total / source_total if source_total else 0.0


def is_lone_letter(word: str) -> bool:
    """A one-letter word other than `a` and `i`: in a hashtag nearly always a wrong split."""
    return len(word) == 1 and word.isalpha() and word not in "ai"


def shrink_lone_letters(unigrams: dict, bigrams: dict, factor: float) -> None:
    """Multiply the counts of lone letters (`is_lone_letter`) by factor, in place.

    Text gives lone letters (initials, list markers, the `s` of a split `'s`) the mass of common words, while a
    lone letter in a hashtag is nearly always a wrong split (`dinosaur s`). Word pairs with a lone letter shrink
    with it, so P(letter | prev) shrinks and P(next | letter) stays <= 1.
    """
    for word in [word for word in unigrams if is_lone_letter(word)]:
        unigrams[word] = max(1, round(unigrams[word] * factor))
    for pair in list(bigrams):
        first, second = pair.split(NGRAM_SEP)
        shrink = (factor if is_lone_letter(first) else 1) * (factor if is_lone_letter(second) else 1)
        if shrink != 1:
            bigrams[pair] = round(bigrams[pair] * shrink)
            if not bigrams[pair]:  # a zero count would be log10(0); an absent pair falls back to unigrams
                del bigrams[pair]


@lru_cache(maxsize=2)
def general_counts(wordfreq_weight: float, single_letter_factor: float) -> tuple[dict[str, int], dict[str, int]]:
    """Web counts mixed with wordfreq, lone letters scaled down: the part of the statistics that does not depend
    on the corpus (built once per process and configuration)."""
    web_unigrams, web_bigrams = web_counts()
    unigrams, bigrams = dict(web_unigrams), dict(web_bigrams)
    frequencies = wordfreq_frequencies()
    mix_into(unigrams, bigrams, frequencies, {},
             share_scale(sum(frequencies.values()), wordfreq_weight, sum(web_unigrams.values())))
    shrink_lone_letters(unigrams, bigrams, single_letter_factor)
    return unigrams, bigrams


def mixed_counts(texts: Iterable[str], keyphrases: Iterable[str],
                 config: SegmenterConfig) -> tuple[dict[str, int], dict[str, int]]:
    """Unigram and bigram counts (ekphrasis key format): `general_counts` mixed with the corpus and keyphrases."""
    general_unigrams, general_bigrams = general_counts(config.wordfreq_weight, config.single_letter_factor)
    unigrams, bigrams = dict(general_unigrams), dict(general_bigrams)
    web_total = sum(web_counts()[0].values())
    # a keyphrase's word pairs tell how hashtags split, so they go into the bigram table too
    for source, weight in ((texts, config.corpus_weight), (keyphrases, config.lexicon_weight)):
        source_unigrams, source_bigrams = count_words(source)
        scale = share_scale(sum(source_unigrams.values()), weight, web_total)  # its share before shrinking
        scaled_unigrams = {word: count * scale for word, count in source_unigrams.items()}
        scaled_bigrams = {pair: count * scale for pair, count in source_bigrams.items()}
        shrink_lone_letters(scaled_unigrams, scaled_bigrams, config.single_letter_factor)
        mix_into(unigrams, bigrams, scaled_unigrams, scaled_bigrams, 1.0)
    return unigrams, bigrams
