"""The reranker: a linear scorer that chooses among the search's best segmentations, its training examples
(K-fold inside the learn-from posts, so that no example sees its own label) and its optimiser."""
from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Mapping

import numpy as np

from pipeline.segment.config import SegmenterConfig
from pipeline.segment.counts import mixed_counts
from pipeline.segment.features import FEATURES, WordStats, candidate_features, feature_matrix
from pipeline.segment.mappings import learn_mappings
from pipeline.segment.search import CountsSegmenter

# each count source's evidence on its own: its log10 P and its word pairs seen
VOTING_FEATURES = ("web log10 P", "wordfreq log10 P", "corpus log10 P", "lexicon log10 P", "web pairs",
                   "corpus pairs", "lexicon pairs")
_VOTING_COLUMNS = [FEATURES.index(name) for name in VOTING_FEATURES]


def with_source_votes(features: np.ndarray) -> np.ndarray:
    """A candidate list's features [candidates, FEATURES] with one column more per VOTING_FEATURES: 1 where the
    candidate has that feature's highest value in the list (ties all vote). Whether the sources agree on a
    candidate is a property of the list, which no weighted sum of one candidate's own features can express."""
    columns = features[:, _VOTING_COLUMNS]
    return np.hstack([features, columns >= columns.max(0) - 1e-9])


def conditional_logit_gradient(x: np.ndarray, valid: np.ndarray, gold: np.ndarray, weights: np.ndarray,
                               l2: float) -> np.ndarray:
    """The gradient of the mean -log softmax probability of each list's labelled candidate, L2-penalised.
    x: [lists, candidates, features], valid: [lists, candidates] (False pads a shorter list), gold: [lists]."""
    logits = np.where(valid, x @ weights, -np.inf)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    # d(-mean log p(gold))/dw = E_p[x] - x_gold, averaged over the lists
    gradient = (np.einsum("lc,lcf->f", probabilities, x) - x[np.arange(len(gold)), gold].sum(0)) / len(gold)
    return gradient + l2 * weights


def fit_conditional_logit(x: np.ndarray, valid: np.ndarray, gold: np.ndarray, l2: float,
                          steps: int) -> np.ndarray:
    """Weights [features] of a softmax over each list's candidates (conditional logit), from zero, by full-batch
    Adam (its usual decay rates, step size 0.05) for a fixed number of steps: the loss is convex, so there is no
    stopping rule to tune."""
    width = x.shape[-1]
    weights = np.zeros(width)
    moment, velocity = np.zeros(width), np.zeros(width)
    for step in range(1, steps + 1):
        gradient = conditional_logit_gradient(x, valid, gold, weights, l2)
        moment = 0.9 * moment + 0.1 * gradient
        velocity = 0.999 * velocity + 0.001 * gradient ** 2
        weights -= 0.05 * (moment / (1 - 0.9 ** step)) / (np.sqrt(velocity / (1 - 0.999 ** step)) + 1e-8)
    return weights


class Reranker:
    """A linear scorer over `candidate_features` and the sources' votes (`with_source_votes`), standardised: the
    candidate with the highest score wins (the first of equals, so a tie keeps the search's best)."""

    def __init__(self, weights: np.ndarray, mean: np.ndarray, scale: np.ndarray):
        self.weights, self.mean, self.scale = weights, mean, scale

    def scores(self, features: list[Mapping[str, float]]) -> np.ndarray:
        """The score of each candidate of a list (each candidate's features by name) -> [candidates]."""
        return ((with_source_votes(feature_matrix(features)) - self.mean) / self.scale) @ self.weights

    def choose(self, candidates: list[tuple[float, list[str]]], known: Mapping[str, int],
               stats: WordStats) -> list[str]:
        """The words of the best-scored of the search's candidates, (log10 P, words) best first."""
        features = [candidate_features(words, logp, rank, known, stats)
                    for rank, (logp, words) in enumerate(candidates)]
        return candidates[int(self.scores(features).argmax())][1]

    @classmethod
    def fit(cls, lists: list[tuple[list[Mapping[str, float]], int]], l2: float,
            steps: int = 300) -> Reranker:
        """Fitted on lists of (each candidate's features by name, index of the labelled one), standardised."""
        size = max(len(features) for features, _ in lists)
        width = len(FEATURES) + len(VOTING_FEATURES)
        x = np.zeros((len(lists), size, width))
        valid = np.zeros((len(lists), size), dtype=bool)
        gold = np.array([index for _, index in lists])
        for row, (features, _) in enumerate(lists):
            x[row, :len(features)] = with_source_votes(feature_matrix(features))
            valid[row, :len(features)] = True
        mean = x[valid].mean(0)
        scale = x[valid].std(0)
        scale[scale == 0] = 1.0
        return cls(fit_conditional_logit((x - mean) / scale, valid, gold, l2, steps), mean, scale)


def reranker_examples(texts: list[str], keyphrases: list[str], posts: list[tuple[str, list[str]]],
                      overridden: Iterable[str], config: SegmenterConfig
                      ) -> tuple[list[tuple[str, list[dict[str, float]], int]], Counter]:
    """Training examples for the reranker from the segmented keyphrases of `posts`, K-fold so that no example sees
    its own label: the posts are split into `config.rerank_folds` parts by line index (after a seeded shuffle where
    `config.rerank_partition_seed` is set), and each part's keys are searched with statistics and learned mappings
    built from `texts`, `keyphrases` and the other parts only.

    Returns (examples, skipped): an example is (key, its candidates' features by name, index of the label among
    them); skipped counts the held-out keys that are not examples, by reason. Like at inference, only keys that
    reach the search are examples (not those the other parts' learned mappings or the `overridden` manual keys
    answer), and a key whose label is not among the candidates, or with one candidate, teaches nothing.
    Examples + skipped = the distinct keys of each part, summed over the parts.
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
        viterbi = CountsSegmenter(*mixed_counts(fold_texts, fold_keyphrases, config), config)
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
