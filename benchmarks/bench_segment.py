"""Hashtag segmentation accuracy and speed on the CMKP release, ours side by side with the baselines.

    .venv/bin/python benchmarks/bench_segment.py --data ../shared/data/cmkp

Inputs are the keyphrases of `valid_src.txt` with their spaces removed (`savehakeem`), expected outputs the
keyphrases themselves (`save hakeem`). 2-fold cross-validation inside the split: fold k holds the posts whose
0-based line index i has i % 2 == k. Statistics and learned mappings come from the other fold's file only
(written to a temporary `*_src.txt` and passed through the same options as `cmkp-segment --stats-from/--learn-from`),
scores are exact match on the fold's unique keyphrases and per keyphrase instance, averaged over both folds.
Speed: hashtags per second over the fold's unique inputs with an empty memo, one thread, in CPU seconds of this
process (the machine is shared, so wall time would measure the neighbours). Build: wall seconds to construct.
--partition-seeds N also runs the full method N more times, its reranker trained on parts drawn by seeds 0..N-1
instead of by line parity: how far that arbitrary choice moves the score.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from pipeline.segment import (SegmenterConfig, build_segmenter, default_mapping_file, mixed_counts, read_cmkp_src,
                              read_corpus)

# the baselines' statistics: web counts, optionally mixed with the tweets' words, and nothing of ours. The tweets'
# share is the one that suits the baseline best (0.1 of the web total; 0.1, 0.3, 1, 3 and 10 were tried)
BASELINE = SegmenterConfig(wordfreq_weight=0, corpus_weight=0.1, lexicon_weight=0, single_letter_factor=1)


def wordsegment_alone():
    import wordsegment

    wordsegment.load()
    return lambda hashtag: " ".join(wordsegment.segment(hashtag))


def upstream_ekphrasis(unigrams: dict[str, int], bigrams: dict[str, int], home: Path):
    """ekphrasis's own, unmodified `Segmenter`, reading these counts as its stats files under `home`."""
    from ekphrasis.classes.segmenter import Segmenter

    stats = home / ".ekphrasis" / "stats" / "cmkp"
    stats.mkdir(parents=True, exist_ok=True)
    for n, counts in ((1, unigrams), (2, bigrams)):
        with open(stats / f"counts_{n}grams.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{key}\t{count}\n" for key, count in counts.items())
    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # ekphrasis finds its stats under expanduser("~")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
            segmenter = Segmenter(corpus="cmkp")
    finally:
        if saved_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = saved_home
    return segmenter.segment


def tweet_texts(train: Path) -> list[str]:
    return read_corpus(train)[0]


METHODS = {
    "wordsegment alone": lambda train, home: wordsegment_alone(),
    "ekphrasis, web counts": lambda train, home: upstream_ekphrasis(*mixed_counts([], [], BASELINE), home),
    "ekphrasis, web + tweet counts": lambda train, home: upstream_ekphrasis(
        *mixed_counts(tweet_texts(train), [], BASELINE), home),
    # statistics only: every hashtag goes through the Viterbi search (its speed without mapping hits)
    "ours, statistics only": lambda train, home: build_segmenter(stats_from=[train], mappings=()).segment,
    # the manual list is hand-curated, not fitted; this row shows how much of ours it accounts for
    "ours without the manual list": lambda train, home: build_segmenter(stats_from=[train], learn_from=[train],
                                                                        mappings=()).segment,
    # the search's best where the reranker would choose among its candidates: what the reranker adds
    "ours without the reranker": lambda train, home: build_segmenter(stats_from=[train], learn_from=[train],
                                                                     mappings=[default_mapping_file()],
                                                                     rerank=False).segment,
    "ours (full method)": lambda train, home: build_segmenter(stats_from=[train], learn_from=[train],
                                                              mappings=[default_mapping_file()]).segment,
}


def score(segment, keyphrases: list[str]) -> tuple[float, float, float, list[tuple[str, str]]]:
    """(unique accuracy, instance accuracy, hashtags/s, errors) of a segment function on keyphrases."""
    unique = sorted(set(keyphrases))
    start = time.process_time()
    output = {k: segment(k.replace(" ", "")) for k in unique}
    rate = len(unique) / (time.process_time() - start)
    errors = [(k, output[k]) for k in unique if output[k] != k]
    counts = Counter(keyphrases)
    instance_correct = sum(n for k, n in counts.items() if output[k] == k)
    return 1 - len(errors) / len(unique), instance_correct / len(keyphrases), rate, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cmkp", help="directory holding valid_src.txt")
    parser.add_argument("--show-errors", type=int, default=0, help="print this many errors of ours per fold")
    parser.add_argument("--partition-seeds", type=int, default=0,
                        help="also run the full method with the reranker's training posts shuffled by seeds 0..N-1 "
                             "before its K-fold split (an arbitrary choice): the spread it causes")
    args = parser.parse_args()
    source = Path(args.data) / "valid_src.txt"
    if not source.exists():
        print(f"skipped: {source} not found (the CMKP release is not on this machine)")
        return 0
    import torch

    torch.set_num_threads(1)
    lines = [line for line in source.read_text(encoding="utf-8").split("\n") if line]
    posts = read_cmkp_src(source)
    results = {name: [] for name in METHODS}
    shuffled = {seed: [] for seed in range(args.partition_seeds)}
    with tempfile.TemporaryDirectory() as tmp:
        folds = []  # (the other fold's file, the fold's keyphrases)
        for fold in (0, 1):
            train = Path(tmp) / f"fold{fold}_train_src.txt"
            train.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % 2 != fold),
                             encoding="utf-8")
            folds.append((train, [k for i, (_, ks) in enumerate(posts) if i % 2 == fold for k in ks]))
        for fold, (train, scored) in enumerate(folds):
            for name, make in METHODS.items():
                start = time.perf_counter()
                segment = make(train, Path(tmp) / f"home-{fold}-{list(METHODS).index(name)}")
                build_s = time.perf_counter() - start
                unique_acc, instance_acc, rate, errors = score(segment, scored)
                results[name].append((unique_acc, instance_acc, rate, build_s, len(errors), len(set(scored))))
                if name.startswith("ours") and args.show_errors:
                    for expected, got in errors[:args.show_errors]:
                        print(f"fold {fold}: {expected!r:40} got {got!r}")
        # after all timed runs: the segmenters these leave behind would slow the timings of later ones
        for seed, rows in shuffled.items():
            for train, scored in folds:
                segment = build_segmenter(stats_from=[train], learn_from=[train], mappings=[default_mapping_file()],
                                          config=SegmenterConfig(rerank_partition_seed=seed)).segment
                unique_acc, _, _, errors = score(segment, scored)
                rows.append((unique_acc, len(errors)))
    print(f"{len(posts)} posts, 2-fold CV by line index parity; exact match, mean of the folds")
    print(f"{'method':32} {'unique':>8} {'instance':>9} {'hashtags/s':>11} {'build s':>8}  unique errors per fold")
    for name, rows in results.items():
        mean = [sum(column) / len(rows) for column in list(zip(*rows))[:4]]
        per_fold = " / ".join(f"{row[4]} of {row[5]}" for row in rows)
        print(f"{name:32} {mean[0]:8.2%} {mean[1]:9.2%} {mean[2]:11.0f} {mean[3]:8.2f}  {per_fold}")
    if shuffled:
        print("full method, the reranker's training posts shuffled before its split (unique exact match, mean of "
              "the folds; errors per fold):")
        accuracies = []
        for seed, rows in shuffled.items():
            accuracies.append(sum(accuracy for accuracy, _ in rows) / len(rows))
            print(f"  seed {seed}: {accuracies[-1]:.3%}  " + " / ".join(str(errors) for _, errors in rows))
        print(f"  mean {sum(accuracies) / len(accuracies):.3%}, range {min(accuracies):.3%} - {max(accuracies):.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
