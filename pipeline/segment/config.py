"""The segmenter's settings: the statistics' mix, the search's calibration for hashtags, the reranker's training."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmenterConfig:
    """The statistics' mix (each source's total is rescaled to `weight` x the web counts' total) and the search's
    calibration for hashtags. Defaults: chosen on the CMKP validation split's 2-fold benchmark
    (benchmarks/bench_segment.py, docs/segmentation.md), where the results are flat around them."""

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
    # is arbitrary and moves the benchmark by a few hashtags (docs/segmentation.md, "The size of one hashtag"), so
    # benchmarks/bench_segment.py --partition-seeds measures the method over several
    rerank_partition_seed: int | None = None
    # fewer training examples than this: by default the search alone decides (a ranker fitted on a handful of
    # keyphrases would be noise); asked for explicitly, it is an error
    rerank_min_examples: int = 100
