"""Hashtag segmentation: `#SaveHakeem` -> `save hakeem`.

The paper segments hashtags with ekphrasis's segmenter (a Viterbi search over unigram/bigram word counts).
ekphrasis downloads its statistics on first use, which is not possible here, so the counts are built offline,
each source rescaled to a fixed share of the web total (`SegmenterConfig`):

* web counts: the Google web unigram/bigram counts that the `wordsegment` package ships in its wheel;
* wordfreq's large English word list (unigrams; web, Twitter, Reddit, subtitles: newer words such as `asmr`);
* corpus counts: words and word pairs of the posts being processed (hashtags, mentions, URLs left out);
* a keyphrase lexicon: words and word pairs of already segmented keyphrases (a CMKP `*_src.txt` given as a
  statistics source), since hashtag vocabulary differs from running text (fandom names, event names).

The counts are handed to a subclass of ekphrasis's `Segmenter` in memory (`_CountsSegmenter`), so nothing is
read from or written to `~/.ekphrasis` and nothing is ever downloaded. It scores exactly as ekphrasis does, with
three calibrations for hashtags: lone letters (`s`, `x`) are rare words, unknown words are likelier (acronyms),
and digit runs are never cut.

Order of precedence for one hashtag: the manual mapping list (`data/hashtag_segmentation.tsv`, curated by hand)
always wins, then learned mappings (keyphrases seen segmented in a `--learn-from` corpus), then the Viterbi
search, run separately on each CamelCase part where the hashtag has mixed case. With segmented keyphrases to learn
from, a reranker chooses among the search's 10 best segmentations instead of taking the best: a linear scorer over
features the search's fixed mix cannot express (each count source on its own, lone letters, digits cut from
letters, what the learned mappings say about the parts), trained on those keyphrases K-fold so that no example
sees its own label (`reranker_examples`).

The mapping list is read from the checkout (`data/`, also what an editable install sees) or, in an installed
package, from `<prefix>/share/cmkp/`, where setup.cfg's `[options.data_files]` puts it (`default_mapping_file`).
"""
from __future__ import annotations

import heapq
import math
import random
import re
import site
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import click
import numpy as np

MAPPING_FILE_NAME = "hashtag_segmentation.tsv"
CMKP_SEP = "<sep>"
# ekphrasis joins bigram keys with "_" (ekphrasis.classes.segmenter.NGRAM_SEP)
NGRAM_SEP = "_"
# the Viterbi state "the previous word starts no bigram" (no bigram key begins with "_")
NO_CONTEXT = ""
# not words of running text: placeholders of preprocessed text (<user>, <url>, <number>), URLs, mentions, and
# hashtags (counting `savehakeem` as a word would vote for leaving the hashtags unsegmented)
NOT_WORDS = re.compile(r"<[a-z_]+>|https?://\S+|[@#][^\W]+")
WORD = re.compile(r"[a-z0-9]+")
# letters and digits of any script: what a hashtag is made of (underscores and punctuation separate words)
ALNUM = re.compile(r"[^\W_]+")
# CamelCase parts: an acronym before a capitalised word (BTSArmy -> BTS, Army), a capitalised or lowercase
# word, an all-caps run, a number
CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


@dataclass
class SegmenterConfig:
    """The statistics' mix (each source's total is rescaled to `weight` x the web counts' total) and the search's
    calibration for hashtags. Defaults: chosen on the CMKP validation split's 2-fold benchmark
    (benchmarks/bench_segment.py), where the results are flat around them."""

    wordfreq_weight: float = 1.0  # wordfreq's modern word list (web, Twitter, Reddit, subtitles; unigrams only)
    corpus_weight: float = 1.0  # words and word pairs of the corpus being processed
    lexicon_weight: float = 1.0  # words and word pairs of already segmented keyphrases
    # web counts give lone letters (initials, list markers) the mass of common words, while a lone letter in a
    # hashtag is nearly always a wrong split (`dinosaur s`); their counts are multiplied by this
    single_letter_factor: float = 0.01
    # P(unknown word) = unknown_scale x ekphrasis's 10 / (N x 10^len): a hashtag's unknown word is more often an
    # acronym or a name (`bwfc`) than running text's, and splitting it into short known words is nearly always wrong
    unknown_scale: float = 1e6
    # wordfreq's estimate for a number (`19`: 2e-4) times this: smaller keeps `ff14` whole, larger splits `wwdc 19`
    number_factor: float = 1e-4
    max_split_length: int = 20  # longest word the Viterbi search considers (ekphrasis's default)
    # the reranker (with supervised keyphrases): how many of the search's best segmentations it chooses among,
    # the K of its K-fold training inside the learn-from posts, and its weights' L2 penalty
    candidates: int = 10
    rerank_folds: int = 2
    rerank_l2: float = 0.001
    # which posts form the K parts: None by line index (index % K); a seed shuffles the posts first. The partition
    # is arbitrary, and 16 seeds spread the benchmark's errors over 10 hashtags on a fold (docs/segmentation.md),
    # so benchmarks/bench_segment.py --partition-seeds measures the method over several
    rerank_partition_seed: int | None = None
    # fewer training examples than this: by default the search alone decides (a ranker fitted on a handful of
    # keyphrases would be noise); asked for explicitly, it is an error
    rerank_min_examples: int = 100


# ----------------------------------------------------------------------------------------------------------
# word statistics


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


def is_cmkp_src(path: Path) -> bool:
    """A CMKP release `*_src.txt` (`text<sep>kp1;kp2<sep>url` per line), judged by its first line."""
    with open(path, encoding="utf-8") as f:
        return f.readline().count(CMKP_SEP) == 2


def read_cmkp_src(path: Path) -> list[tuple[str, list[str]]]:
    """(post text, keyphrases) per line of a CMKP `*_src.txt`; a malformed line is an error naming it."""
    posts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split(CMKP_SEP)
            if len(fields) != 3:
                raise ValueError(f"{path}:{number}: expected text{CMKP_SEP}keyphrases{CMKP_SEP}url, "
                                 f"got {len(fields)} fields")
            keyphrases = [" ".join(k.split()) for k in fields[1].split(";") if k.strip()]
            posts.append((fields[0], keyphrases))
    return posts


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(texts, segmented keyphrases) of a corpus file: a CMKP `*_src.txt` or plain text (one post per line)."""
    path = Path(path)
    if is_cmkp_src(path):
        posts = read_cmkp_src(path)
        return [text for text, _ in posts], [k for _, keyphrases in posts for k in keyphrases]
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()], []


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


def shrink_lone_letters(unigrams: dict, bigrams: dict, factor: float) -> None:
    """Multiply the counts of lone letters other than `a` and `i` by factor, in place.

    Text gives lone letters (initials, list markers, the `s` of a split `'s`) the mass of common words, while a
    lone letter in a hashtag is nearly always a wrong split (`dinosaur s`). Word pairs with a lone letter shrink
    with it, so P(letter | prev) shrinks and P(next | letter) stays <= 1.
    """
    def is_lone_letter(word: str) -> bool:
        return len(word) == 1 and word.isalpha() and word not in "ai"

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


# ----------------------------------------------------------------------------------------------------------
# mappings


def mapping_key(hashtag: str) -> str:
    """The lookup key of a hashtag: without `#`, lowercase, nothing but letters and digits."""
    return "".join(ALNUM.findall(hashtag.lower()))


def default_mapping_file() -> Path:
    """The project's hand-curated mapping list: `data/` of the checkout this module sits in (a clone or an editable
    install), else the copy an installed wheel put under `<prefix>/share/cmkp/` (setup.cfg `[options.data_files]`;
    prefix: the environment's, or the user base of a `pip install --user`). Missing everywhere: an error naming
    the places looked at."""
    candidates = [Path(__file__).resolve().parent.parent / "data" / MAPPING_FILE_NAME,
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


# ----------------------------------------------------------------------------------------------------------
# the segmenter


@lru_cache(maxsize=1)
def _ekphrasis_segmenter_class():
    from ekphrasis.classes.segmenter import Pdist, Segmenter

    class _CountsSegmenter(Segmenter):
        """ekphrasis's Viterbi segmenter over counts given in memory.

        `Segmenter.__init__` reads `~/.ekphrasis/stats/<corpus>/` and downloads the stats when it is missing;
        this sets the same attributes from the given counts instead. Changes, each for a reason: an unknown
        word's probability is scaled (`SegmenterConfig.unknown_scale`) and one with digits gets wordfreq's
        number estimate when that is higher; a run of digits is never cut (`1 0 year challenge`); the search
        keeps its memo per call (ekphrasis's class-level `lru_cache` would keep every instance and its tables
        alive) and computes the same probabilities without its exception-driven fallback (speed). Only the
        search is used: CamelCase and mappings are HashtagSegmenter's job, so ekphrasis's `segment` and its
        CamelCase regex (`case_split`) are not set up.
        """

        def __init__(self, unigrams: dict[str, int], bigrams: dict[str, int], config: SegmenterConfig):
            self.unknown_scale = config.unknown_scale
            self.number_factor = config.number_factor
            self.unigrams = unigrams
            self.bigrams = bigrams
            self.N = sum(unigrams.values())
            self.L = config.max_split_length
            self.Pw = Pdist(unigrams, self.N, self.unk_probability)
            self.P2w = Pdist(bigrams, self.N)
            self.bigram_firsts = {pair.split(NGRAM_SEP, 1)[0] for pair in bigrams}
            # log10 P(word) does not depend on the context: shared by all calls, bounded
            self.log_unigram = lru_cache(maxsize=1 << 20)(lambda word: math.log10(self.Pw(word)))

        def unk_probability(self, key, total):
            unknown = self.unknown_scale * Segmenter.unk_probability(key, total)
            if not key.isalpha():
                return max(unknown, self.number_factor * number_frequency(key))
            return unknown

        def last_end(self, text, i):
            """The furthest end of a word that starts at i: max_split_length on, but a run of digits is never cut,
            so one longer than that is a word of its own."""
            end = min(len(text), i + self.L)
            while end < len(text) and text[end - 1].isdigit() and text[end].isdigit():
                end += 1
            return end

        def find_segment(self, text, prev="<S>"):
            """(log10 P(words), words) of the best segmentation of text, scored as ekphrasis's `condProbWord`
            scores it, never cutting between two digits.

            Dynamic programming from the end of the text (no recursion, so any length works). State: a position
            and the previous word. A previous word that starts no bigram conditions nothing (the unigram fallback),
            so all such words share one state, NO_CONTEXT: exact, and it keeps the states per position to the few
            known words ending there. At each position the unigram-scored candidates are ranked once; a context
            word only re-scores the candidates it has a bigram with.
            """
            n = len(text)
            start = prev if prev in self.bigram_firsts else NO_CONTEXT
            # best[i, context] = (log10 P of the best words for text[i:] after context, end of the first word)
            best: dict[tuple[int, str], tuple[float, int]] = {}
            for i in range(n - 1, -1, -1):
                # (first word, log10 P of the best rest after it, end) for each allowed end j
                options = []
                for j in range(i + 1, self.last_end(text, i) + 1):
                    if j < n and text[j - 1].isdigit() and text[j].isdigit():
                        continue
                    first = text[i:j]
                    rest = best[j, first if first in self.bigram_firsts else NO_CONTEXT][0] if j < n else 0.0
                    options.append((first, rest, j))
                ranked = sorted(((self.log_unigram(first) + rest, j) for first, rest, j in options), reverse=True)
                best[i, NO_CONTEXT] = ranked[0]
                contexts = {start} if i == 0 else {text[k:i] for k in range(max(0, i - self.L), i)}
                for context in contexts & self.bigram_firsts:
                    if context not in self.Pw:  # no unigram count: ekphrasis falls back to unigrams
                        best[i, context] = ranked[0]
                        continue
                    context_count = self.Pw[context]
                    rescored = {}
                    for first, rest, j in options:
                        pair = self.P2w.get(context + NGRAM_SEP + first)
                        if pair is not None:
                            rescored[j] = math.log10(pair / context_count) + rest
                    top = next((candidate for candidate in ranked if candidate[1] not in rescored), (-math.inf, n))
                    best[i, context] = max([top, *((logp, j) for j, logp in rescored.items())])
            words, i, context = [], 0, start
            logp = best[0, start][0] if n else 0.0
            while i < n:
                j = best[i, context][1]
                words.append(text[i:j])
                i, context = j, text[i:j] if text[i:j] in self.bigram_firsts else NO_CONTEXT
            return logp, words

        def candidates(self, text, size):
            """The `size` likeliest segmentations of text as (log10 P, words), best first, under the same scores
            and the same no-cut rule for digits as `find_segment`.

            A beam over end positions: the segmentations of text[:i] are complete when i is reached, so each position
            keeps its `size` best before extending them by one word. A beam could in principle prune the prefix of
            the best segmentation; on the benchmark's 1,488 searched inputs the first candidate was `find_segment`'s
            answer every time (the tests compare the two).
            """
            n = len(text)
            beams: list[list] = [[] for _ in range(n + 1)]
            beams[0].append((0.0, (), "<S>"))
            for i in range(n):
                if not beams[i]:
                    continue
                hypotheses = heapq.nlargest(size, beams[i]) if len(beams[i]) > size else beams[i]
                beams[i] = []
                # (context count or None, ...) once per hypothesis: only contexts that start a bigram re-score
                contexts = [(logp, words, self.Pw.get(context) if context in self.bigram_firsts else None, context)
                            for logp, words, context in hypotheses]
                for j in range(i + 1, self.last_end(text, i) + 1):
                    if j < n and text[j - 1].isdigit() and text[j].isdigit():
                        continue
                    word = text[i:j]
                    unigram = self.log_unigram(word)
                    extended = beams[j]
                    for logp, words, context_count, context in contexts:
                        pair = self.P2w.get(context + NGRAM_SEP + word) if context_count else None
                        score = math.log10(pair / context_count) if pair is not None else unigram
                        extended.append((logp + score, words + (word,), word))
            return [(logp, list(words)) for logp, words, _ in heapq.nlargest(size, beams[n])]

    return _CountsSegmenter


# ----------------------------------------------------------------------------------------------------------
# reranking the search's candidates


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


# wordfreq's frequencies are shares (they sum to about 1); its smallest is about 1e-8: unknown words are estimated as
# if it were counts over 1e8 words
WORDFREQ_LOG10_TOTAL = 8.0
# one name per feature, in the order `candidate_features` returns them
FEATURES = ("search log10 P", "words", "lone letters", "lone a or i", "letter-digit cuts", "unknown words",
            "web log10 P", "wordfreq log10 P", "corpus log10 P", "lexicon log10 P", "lexicon words", "lexicon pairs",
            "corpus pairs", "web pairs", "wordfreq-only words", "longest word share", "two-letter words",
            "search's best", "learned keys split", "learned pairs glued", "vowel-less words")
# a word of two or more letters without one of these is an acronym (`nh`, `bts`, `fcb`)
VOWELS = frozenset("aeiouy")


def candidate_features(words: list[str], logp: float, rank: int, known: Mapping[str, int],
                       stats: WordStats) -> list[float]:
    """The features of one candidate segmentation: its words, its log10 P and rank in the search, `known` the
    search's unigram table.

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
    return [
        logp,
        len(words),
        sum(len(word) == 1 and word.isalpha() and word not in "ai" for word in words),
        sum(word in ("a", "i") for word in words),
        letter_digit_cuts,
        sum(word not in known for word in words),
        sum(log10_probability(word, stats.web_unigrams, web_total, web_total) for word in words),
        sum(log10_probability(word, stats.frequencies, 0.0, WORDFREQ_LOG10_TOTAL) for word in words),
        stats.log10_sequence_probability(words, stats.corpus_unigrams, stats.corpus_bigrams, corpus_total),
        stats.log10_sequence_probability(words, stats.lexicon_unigrams, stats.lexicon_bigrams, lexicon_total),
        sum(word in stats.lexicon_unigrams for word in words),
        sum(pair in stats.lexicon_bigrams for pair in pairs),
        sum(pair in stats.corpus_bigrams for pair in pairs),
        sum(pair in stats.web_bigrams for pair in pairs),
        sum(word in stats.frequencies and word not in stats.web_unigrams for word in words),
        max(map(len, words)) / len(text),
        sum(len(word) == 2 for word in words),
        rank == 0,
        sum(" " in learned.get(word, "") for word in words),
        sum(learned.get(first + second, f"{first} {second}") != f"{first} {second}"
            for first, second in zip(words, words[1:])),
        sum(len(word) > 1 and word.isalpha() and not VOWELS.intersection(word) for word in words),
    ]


# each count source's evidence on its own: its log10 P and its word pairs seen
VOTING_FEATURES = ("web log10 P", "wordfreq log10 P", "corpus log10 P", "lexicon log10 P", "web pairs",
                   "corpus pairs", "lexicon pairs")


def with_source_votes(features):
    """A candidate list's features [candidates, FEATURES] with one column more per VOTING_FEATURES: 1 where the
    candidate has that feature's highest value in the list (ties all vote). Whether the sources agree on a
    candidate is a property of the list, which no weighted sum of one candidate's own features can express."""
    columns = features[:, [FEATURES.index(name) for name in VOTING_FEATURES]]
    return np.hstack([features, columns >= columns.max(0) - 1e-9])


class Reranker:
    """A linear scorer over `candidate_features` and the sources' votes (`with_source_votes`), standardised: the
    candidate with the highest score wins (the first of equals, so a tie keeps the search's best)."""

    def __init__(self, weights, mean, scale):
        self.weights, self.mean, self.scale = weights, mean, scale

    def scores(self, features):
        """The score of each candidate of a list, features: [candidates, FEATURES] -> [candidates]."""
        return ((with_source_votes(np.asarray(features)) - self.mean) / self.scale) @ self.weights

    def choose(self, candidates: list[tuple[float, list[str]]], known: Mapping[str, int],
               stats: WordStats) -> list[str]:
        features = [candidate_features(words, logp, rank, known, stats)
                    for rank, (logp, words) in enumerate(candidates)]
        return candidates[int(self.scores(features).argmax())][1]

    @classmethod
    def fit(cls, lists: list[tuple[list[list[float]], int]], l2: float, steps: int = 300) -> "Reranker":
        """Softmax over each list's candidates (conditional logit), L2-penalised, by full-batch gradient descent
        with Adam steps. lists: (features of each candidate, index of the labelled one)."""
        size = max(len(features) for features, _ in lists)
        width = len(lists[0][0][0]) + len(VOTING_FEATURES)
        x = np.zeros((len(lists), size, width))
        valid = np.zeros((len(lists), size), dtype=bool)
        gold = np.array([index for _, index in lists])
        for row, (features, _) in enumerate(lists):
            x[row, :len(features)] = with_source_votes(np.array(features))
            valid[row, :len(features)] = True
        mean = x[valid].mean(0)
        scale = x[valid].std(0)
        scale[scale == 0] = 1.0
        x = (x - mean) / scale
        weights = np.zeros(width)
        moment, velocity = np.zeros(width), np.zeros(width)
        for step in range(1, steps + 1):
            logits = np.where(valid, x @ weights, -np.inf)
            probabilities = np.exp(logits - logits.max(1, keepdims=True))
            probabilities /= probabilities.sum(1, keepdims=True)
            # d(-mean log p(gold))/dw = E_p[x] - x_gold, averaged over the lists
            gradient = (np.einsum("lc,lcf->f", probabilities, x) - x[np.arange(len(lists)), gold].sum(0)) / len(lists)
            gradient += l2 * weights
            moment = 0.9 * moment + 0.1 * gradient
            velocity = 0.999 * velocity + 0.001 * gradient ** 2
            weights -= 0.05 * (moment / (1 - 0.9 ** step)) / (np.sqrt(velocity / (1 - 0.999 ** step)) + 1e-8)
        return cls(weights, mean, scale)


def reranker_examples(texts: list[str], keyphrases: list[str], posts: list[tuple[str, list[str]]],
                      overridden: Iterable[str], config: SegmenterConfig
                      ) -> tuple[list[tuple[str, list[list[float]], int]], Counter]:
    """Training examples for the reranker from the segmented keyphrases of `posts`, K-fold so that no example sees
    its own label: the posts are split into `config.rerank_folds` parts by line index (after a seeded shuffle where
    `config.rerank_partition_seed` is set), and each part's keys are searched with statistics and learned mappings
    built from `texts`, `keyphrases` and the other parts only.

    Returns (examples, skipped): an example is (key, its candidates' features, index of the label among them);
    skipped counts the held-out keys that are not examples, by reason. Like at inference, only keys that reach the
    search are examples (not those the other parts' learned mappings or the `overridden` manual keys answer), and
    a key whose label is not among the candidates, or with one candidate, teaches nothing. Examples + skipped =
    the distinct keys of each part, summed over the parts.
    """
    overridden = set(overridden)
    if config.rerank_partition_seed is not None:
        posts = list(posts)
        random.Random(config.rerank_partition_seed).shuffle(posts)
    examples, skipped = [], Counter()
    for fold in range(config.rerank_folds):
        inside = [post for index, post in enumerate(posts) if index % config.rerank_folds != fold]
        held_out = [post for index, post in enumerate(posts) if index % config.rerank_folds == fold]
        fold_texts = texts + [text for text, _ in inside]
        inside_keyphrases = [keyphrase for _, post_keyphrases in inside for keyphrase in post_keyphrases]
        fold_keyphrases = keyphrases + inside_keyphrases
        learned = learn_mappings(inside_keyphrases)
        viterbi = _ekphrasis_segmenter_class()(*mixed_counts(fold_texts, fold_keyphrases, config), config)
        stats = WordStats(fold_texts, fold_keyphrases, learned)
        held_out_labels = learn_mappings(keyphrase for _, post_keyphrases in held_out for keyphrase in post_keyphrases)
        for key, label in held_out_labels.items():
            if key in learned or key in overridden:
                skipped["answered by a mapping"] += 1
                continue
            if not key.isascii():
                skipped["not ASCII (never searched)"] += 1
                continue
            candidates = viterbi.candidates(key, config.candidates)
            index = next((rank for rank, (_, words) in enumerate(candidates) if " ".join(words) == label), None)
            if index is None:
                skipped["label not among the candidates"] += 1
            elif len(candidates) == 1:
                skipped["one candidate"] += 1
            else:
                examples.append((key, [candidate_features(words, logp, rank, viterbi.Pw, stats)
                                       for rank, (logp, words) in enumerate(candidates)], index))
    return examples, skipped


class HashtagSegmenter:
    """`segment(hashtag)` -> lowercase words joined by single spaces (memoised per distinct input)."""

    def __init__(self, viterbi, mappings: Mapping[str, str], reranker: Reranker | None = None,
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
                    config: SegmenterConfig = SegmenterConfig(), rerank: bool | None = None) -> HashtagSegmenter:
    """A hashtag segmenter over web counts mixed with wordfreq, corpus and keyphrase counts.

    corpus_texts: raw or tokenized post texts whose words are mixed into the statistics.
    stats_from: corpus files (plain text, or CMKP `*_src.txt` whose keyphrases also feed the lexicon).
    learn_from: CMKP `*_src.txt` files whose segmented keyphrases become mapping entries.
    mappings: TSV files of hand-curated entries; they win over everything (later files over earlier ones).
        None: the project's own list (`default_mapping_file()`); () for none.
    rerank: choose among the search's candidates with a reranker trained on the learn-from keyphrases
        (`reranker_examples`); None: whenever learn_from gives it `config.rerank_min_examples` examples.
        The learn-from files then also join the statistics (texts and keyphrases), the way the training folds saw
        them.
    """
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
    viterbi = _ekphrasis_segmenter_class()(unigrams, bigrams, config)
    return HashtagSegmenter(viterbi, {**learned, **manual}, reranker, stats, config.candidates)


# ----------------------------------------------------------------------------------------------------------
# command line


@click.command()
@click.option("--stats-from", "stats_from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Text corpus (one post per line) or CMKP *_src.txt whose word counts join the statistics.")
@click.option("--learn-from", "learn_from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="CMKP *_src.txt whose segmented keyphrases become mapping entries.")
@click.option("--mapping", "mapping_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="TSV of hashtag<TAB>segmentation, applied after the project's own list.")
@click.option("--rerank/--no-rerank", default=None,
              help="Choose among the search's candidates with a reranker trained on the --learn-from keyphrases "
                   "(default: whenever they give it enough examples).")
def main(stats_from, learn_from, mapping_files, rerank):
    """Segment hashtags read one per line on stdin (`#` optional, any case); one segmentation per line out."""
    segmenter = build_segmenter(stats_from=stats_from, learn_from=learn_from,
                                mappings=(default_mapping_file(), *mapping_files), rerank=rerank)
    for line in sys.stdin:
        sys.stdout.write(segmenter.segment(line.strip()) + "\n")


if __name__ == "__main__":
    main()
