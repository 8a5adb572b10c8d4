"""The Viterbi search: ekphrasis's segmenter over count tables given in memory, and its k best segmentations."""
from __future__ import annotations

import heapq
import math
from functools import lru_cache

from ekphrasis.classes.segmenter import Pdist, Segmenter

from pipeline.segment.config import SegmenterConfig
from pipeline.segment.counts import NGRAM_SEP, number_frequency

# the Viterbi state "the previous word starts no bigram" (no bigram key begins with "_")
NO_CONTEXT = ""


class CountsSegmenter(Segmenter):
    """ekphrasis's Viterbi segmenter over counts given in memory.

    `Segmenter.__init__` reads `~/.ekphrasis/stats/<corpus>/` and downloads the stats when it is missing; this sets
    the same attributes from the given counts instead. Changes, each for a reason: an unknown word's probability is
    scaled (`SegmenterConfig.unknown_scale`) and one with digits gets wordfreq's number estimate when that is
    higher; a run of digits is never cut (`1 0 year challenge`); the search keeps its memo per call (ekphrasis's
    class-level `lru_cache` would keep every instance and its tables alive) and computes the same probabilities
    without its exception-driven fallback (speed). Only the search is used: CamelCase and mappings are
    `HashtagSegmenter`'s job, so ekphrasis's `segment` and its CamelCase regex (`case_split`) are not set up.
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
        """The furthest end of a word that starts at i: max_split_length on, but a run of digits is never cut, so
        one longer than that is a word of its own."""
        end = min(len(text), i + self.L)
        while end < len(text) and text[end - 1].isdigit() and text[end].isdigit():
            end += 1
        return end

    def find_segment(self, text, prev="<S>"):
        """(log10 P(words), words) of the best segmentation of text, scored as ekphrasis's `condProbWord` scores
        it, never cutting between two digits.

        Dynamic programming from the end of the text (no recursion, so any length works). State: a position and
        the previous word. A previous word that starts no bigram conditions nothing (the unigram fallback), so all
        such words share one state, NO_CONTEXT: exact, and it keeps the states per position to the few known words
        ending there. At each position the unigram-scored candidates are ranked once; a context word only
        re-scores the candidates it has a bigram with.
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
        """The `size` likeliest segmentations of text as (log10 P, words), best first, under the same scores and
        the same no-cut rule for digits as `find_segment`.

        A beam over end positions: the segmentations of text[:i] are complete when i is reached, so each position
        keeps its `size` best before extending them by one word. A beam could in principle prune the prefix of the
        best segmentation; the tests check that the first candidate is `find_segment`'s answer.
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
