"""Hashtag segmentation: `#SaveHakeem` -> `save hakeem` (docs/segmentation.md).

The paper segments hashtags with ekphrasis's segmenter (a Viterbi search over unigram/bigram word counts).
ekphrasis downloads its statistics on first use, which is not possible here, so the counts are built offline,
each source rescaled to a fixed share of the web total (`SegmenterConfig`):

* web counts: the Google web unigram/bigram counts that the `wordsegment` package ships in its wheel;
* wordfreq's large English word list (unigrams; web, Twitter, Reddit, subtitles: newer words such as `asmr`);
* corpus counts: words and word pairs of the posts being processed (hashtags, mentions, URLs left out);
* a keyphrase lexicon: words and word pairs of already segmented keyphrases (a CMKP `*_src.txt` given as a
  statistics source), since hashtag vocabulary differs from running text (fandom names, event names).

The counts are handed to a subclass of ekphrasis's `Segmenter` in memory (`CountsSegmenter`), so nothing is read
from or written to `~/.ekphrasis` and nothing is ever downloaded. It scores exactly as ekphrasis does, with three
calibrations for hashtags: lone letters (`s`, `x`) are rare words, unknown words are likelier (acronyms), and digit
runs are never cut.

Order of precedence for one hashtag: the manual mapping list (`data/hashtag_segmentation.tsv`, curated by hand)
always wins, then learned mappings (keyphrases seen segmented in a `--learn-from` corpus), then the Viterbi
search, run separately on each CamelCase part where the hashtag has mixed case. With segmented keyphrases to learn
from, a reranker chooses among the search's best segmentations instead of taking the best: a linear scorer over
features the search's fixed mix cannot express, trained on those keyphrases K-fold so that no example sees its
own label (`reranker_examples`).

One module per job:

* `config`: `SegmenterConfig`, the statistics' mix and the search's calibration;
* `counts`: the count tables (web, wordfreq, a corpus's words) and their mix;
* `corpus`, `mappings`: the files read (corpora; the hand-curated and the learned mapping entries);
* `search`: the Viterbi search and its k best segmentations (`CountsSegmenter`);
* `features`, `reranker`: a candidate's features by name; the reranker, its training examples and its optimiser;
* `segmenter`: `HashtagSegmenter` and `build_segmenter`, which puts the others together;
* `cli`: the `cmkp-segment` command (`python -m pipeline.segment`).
"""
from pipeline.segment.cli import main
from pipeline.segment.config import SegmenterConfig
from pipeline.segment.corpus import read_cmkp_src, read_corpus
from pipeline.segment.counts import mixed_counts, web_counts
from pipeline.segment.features import FEATURES, WordStats, candidate_features
from pipeline.segment.mappings import MAPPING_FILE_NAME, default_mapping_file, learn_mappings, read_mapping_file
from pipeline.segment.reranker import VOTING_FEATURES, Reranker, reranker_examples, with_source_votes
from pipeline.segment.segmenter import HashtagSegmenter, build_segmenter

__all__ = ["FEATURES", "MAPPING_FILE_NAME", "VOTING_FEATURES", "HashtagSegmenter", "Reranker", "SegmenterConfig",
           "WordStats", "build_segmenter", "candidate_features", "default_mapping_file", "learn_mappings", "main",
           "mixed_counts", "read_cmkp_src", "read_corpus", "read_mapping_file", "reranker_examples", "web_counts",
           "with_source_votes"]
