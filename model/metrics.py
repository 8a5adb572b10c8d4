"""Keyphrase metrics, computed exactly as the CMKP authors' evaluator computes them.

The rules (read from the authors' released `unified_model/pred_evaluate_func.py` and `metric_utils.py`):

* a keyphrase string is stripped and split on single spaces; every token is lower-cased and
  Porter-stemmed (nltk `PorterStemmer`, default mode);
* duplicates are detected on the stemmed tokens joined by `_` and removed keeping the first
  occurrence, for gold keyphrases and for predictions; predictions holding a token `<unk>`, `,` or
  `.` are dropped afterwards (the duplicate check still sees them);
* a prediction is a hit when its stemmed tokens joined by spaces equal a unique stemmed gold one;
* with n kept predictions and m = min(k, n): P@k = hits in the first m / m, R@k = those hits /
  n_gold, both 0 when n = 0 (no penalty for fewer than k predictions);
* P@k and R@k are averaged over posts and F1@k is the harmonic mean of the two averages (not the
  mean of per-post F1); AP@k sums precision-at-rank over hits in the first min(k, n) ranks and
  divides by n_gold; MAP@k is its mean over posts;
* present/absent (paper Fig. 5 and the authors' report): a keyphrase is present when its stemmed
  tokens occur contiguously in the stemmed source tokens. Gold AND predictions are split this way
  and each side is scored over the posts that have at least one gold keyphrase of that kind.

Keyphrase-frequency and post-length breakdowns reuse the same machinery: frequency splits gold and
predictions by their count among the training labels; post length splits the posts themselves.

All returned scores are percentages.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from nltk.stem.porter import PorterStemmer

KS = (1, 3, 5)  # the authors' evaluator reports @1, @3 and @5
INVALID_TOKENS = frozenset({"<unk>", ",", "."})
SEP = "<sep>"

# the headline scores, the keys of a metrics dict that tables and summaries show, in this order
HEADLINE = ("f1@1", "f1@3", "map@5")

# Lower edges of the breakdown buckets: [0, 1) = unseen in training, [1, 6), [6, 21), [21, 101), [101, inf).
FREQUENCY_EDGES = (1, 6, 21, 101)
# Post length in source tokens: [0, 11), [11, 21), [21, 31), [31, inf).
LENGTH_EDGES = (11, 21, 31)

Phrase = tuple[str, ...]  # one stemmed keyphrase as its tokens

_stemmer = PorterStemmer()


@functools.lru_cache(maxsize=1 << 18)
def stem_token(token: str) -> str:
    return _stemmer.stem(token.strip().lower())


def stem_phrase(keyphrase: str) -> Phrase:
    """'Wildflower Hours' -> ('wildflow', 'hour'); split on single spaces like the authors."""
    return tuple(stem_token(t) for t in keyphrase.strip().split(" "))


def _unique(phrases: Iterable[Phrase]) -> list[tuple[Phrase, bool]]:
    """(phrase, first occurrence?) with the authors' duplicate key: tokens joined by '_'."""
    seen: set[str] = set()
    out = []
    for p in phrases:
        key = "_".join(p)
        out.append((p, key not in seen))
        seen.add(key)
    return out


def stem_gold(keyphrases: Sequence[str]) -> list[Phrase]:
    """Unique stemmed gold keyphrases, first occurrence kept."""
    return [p for p, first in _unique(stem_phrase(k) for k in keyphrases) if first]


def stem_predictions(keyphrases: Sequence[str]) -> list[Phrase]:
    """Kept stemmed predictions: de-duplicated (first kept), then invalid ones dropped."""
    return [p for p, first in _unique(stem_phrase(k) for k in keyphrases)
            if first and not INVALID_TOKENS.intersection(p)]


def is_present(phrase: Phrase, source: Sequence[str]) -> bool:
    """True when the stemmed phrase occurs contiguously in the stemmed source tokens."""
    if not " ".join(phrase).strip():
        return False
    n = len(phrase)
    return any(tuple(source[i:i + n]) == phrase for i in range(len(source) - n + 1))


# ----------------------------------------------------------------------------------------------
# scoring


def _post_scores(preds: list[Phrase], gold: list[Phrase], ks: Sequence[int]) -> dict[str, float]:
    """Per-post P@k, R@k, AP@k as fractions (the authors' compute_classification_metrics_at_ks
    and average_precision_at_ks)."""
    gold_strings = {" ".join(g) for g in gold}
    hits = [" ".join(p) in gold_strings for p in preds]
    n, n_gold = len(preds), len(gold)
    out = {}
    for k in ks:
        m = min(k, n)
        n_hits = sum(hits[:m])
        out[f"p@{k}"] = n_hits / m if m > 0 else 0.0
        out[f"r@{k}"] = n_hits / n_gold if n > 0 and n_gold > 0 else 0.0
        ap, running = 0.0, 0
        for rank, hit in enumerate(hits[:m], start=1):
            if hit:
                running += 1
                ap += running / rank
        out[f"ap@{k}"] = ap / n_gold if n > 0 and n_gold > 0 else 0.0
    return out


def _average(posts: Sequence[tuple[list[Phrase], list[Phrase]]], ks: Sequence[int]) -> dict:
    """Macro averages over posts in percent: p@k, r@k, f1@k (harmonic mean of the averaged P and
    R), map@k, and num_posts."""
    out: dict = {"num_posts": len(posts)}
    if not posts:
        return out
    per_post = [_post_scores(p, g, ks) for p, g in posts]
    for k in ks:
        p = sum(s[f"p@{k}"] for s in per_post) / len(posts)
        r = sum(s[f"r@{k}"] for s in per_post) / len(posts)
        out[f"p@{k}"] = 100.0 * p
        out[f"r@{k}"] = 100.0 * r
        out[f"f1@{k}"] = 100.0 * (2 * p * r / (p + r) if p + r > 0 else 0.0)
        out[f"map@{k}"] = 100.0 * sum(s[f"ap@{k}"] for s in per_post) / len(posts)
    return out


def _split_by(posts, label_of: Callable[[Phrase, int], str]) -> dict[str, list]:
    """Split gold and predictions of every post by a per-keyphrase label; a post joins the group
    of each label its gold keyphrases carry, with only the predictions of that label."""
    groups: dict[str, list] = {}
    for i, (preds, gold) in enumerate(posts):
        for label in dict.fromkeys(label_of(g, i) for g in gold):
            groups.setdefault(label, []).append(
                ([p for p in preds if label_of(p, i) == label],
                 [g for g in gold if label_of(g, i) == label]))
    return groups


def _prepare(predictions: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]):
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} prediction lists for {len(gold)} gold lists: "
                         "one of each is needed per post, in the same order")
    return [(stem_predictions(p), stem_gold(g)) for p, g in zip(predictions, gold)]


def _stem_sources(sources: Sequence[str], n_posts: int) -> list[list[str]]:
    if len(sources) != n_posts:
        raise ValueError(f"{len(sources)} source texts for {n_posts} posts")
    return [[stem_token(t) for t in s.strip().split()] for s in sources]


def _presence_groups(posts, sources: Sequence[str]) -> dict[str, list]:
    stemmed = _stem_sources(sources, len(posts))
    return _split_by(posts, lambda ph, i: "present" if is_present(ph, stemmed[i]) else "absent")


def compute_metrics(predictions: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                    sources: Sequence[str] | None = None, ks: Sequence[int] = KS) -> dict:
    """Authors'-evaluator scores in percent.

    predictions: per post, ranked keyphrase strings (an empty prediction file line is `['']`);
    gold: per post, gold keyphrase strings; sources: per post, the source text (space-separated
    tokens, OCR appended where the model saw it) -- when given, the same scores restricted to
    present and absent keyphrases are added with the suffixes `_present` / `_absent`.
    Returns {"num_posts", "p@k", "r@k", "f1@k", "map@k" for k in ks, ...}.
    """
    posts = _prepare(predictions, gold)
    out = _average(posts, ks)
    if sources is not None:
        groups = _presence_groups(posts, sources)
        for kind in ("present", "absent"):
            for key, value in _average(groups.get(kind, []), ks).items():
                out[f"{key}_{kind}"] = value
    return out


def bucket_label(value: int, edges: Sequence[int]) -> str:
    """Name of the half-open bucket [lo, hi) holding value, for lower edges `edges` above 0:
    bucket_label(0, (1, 11)) == '0', bucket_label(5, (1, 11)) == '1-10', (12, ...) == '11+'."""
    bounds = [0, *edges]
    for lo, hi in zip(bounds, bounds[1:]):
        if value < hi:
            return str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
    return f"{bounds[-1]}+"


def _ordered(groups: dict[str, list], edges: Sequence[int], ks) -> dict[str, dict]:
    """Scores per bucket, buckets in increasing order (empty ones left out)."""
    labels = [bucket_label(lo, edges) for lo in [0, *edges]]
    return {label: _average(groups[label], ks) for label in labels if label in groups}


def count_keyphrases(gold: Iterable[Sequence[str]]) -> Counter:
    """Training-label counts (keyphrase string -> number of posts carrying it) for breakdowns."""
    return Counter(k.strip() for kps in gold for k in dict.fromkeys(kps))


def compute_breakdowns(predictions: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                       sources: Sequence[str] | None = None,
                       label_counts: Mapping[str, int] | None = None, ks: Sequence[int] = KS,
                       frequency_edges: Sequence[int] = FREQUENCY_EDGES,
                       length_edges: Sequence[int] = LENGTH_EDGES) -> dict:
    """The paper's Fig. 5 analyses, each a dict of metric dicts as compute_metrics returns them:

    "present"/"absent" (needs sources): keyphrases occurring in the source text or not;
    "keyphrase_frequency" (needs label_counts, e.g. count_keyphrases(training gold)): gold and
    predicted keyphrases bucketed by their training count (matched after stemming), bucket "0" =
    unseen in training; "post_length" (needs sources): posts bucketed by source token count.
    """
    posts = _prepare(predictions, gold)
    out: dict = {}
    if sources is not None:
        groups = _presence_groups(posts, sources)
        out["present"] = _average(groups.get("present", []), ks)
        out["absent"] = _average(groups.get("absent", []), ks)
        lengths = [len(s.strip().split()) for s in sources]
        by_length: dict[str, list] = {}
        for post, length in zip(posts, lengths):
            by_length.setdefault(bucket_label(length, length_edges), []).append(post)
        out["post_length"] = _ordered(by_length, length_edges, ks)
    if label_counts is not None:
        stemmed_counts: Counter = Counter()
        for keyphrase, count in label_counts.items():
            stemmed_counts[" ".join(stem_phrase(keyphrase))] += count
        by_frequency = _split_by(
            posts, lambda ph, i: bucket_label(stemmed_counts.get(" ".join(ph), 0), frequency_edges))
        out["keyphrase_frequency"] = _ordered(by_frequency, frequency_edges, ks)
    return out


# ----------------------------------------------------------------------------------------------
# files


def parse_prediction_line(line: str) -> list[str]:
    """'kp1;kp2 words;' -> ['kp1', 'kp2 words', '']; an empty line is one empty prediction."""
    return [kp.strip() for kp in line.strip().split(";")]


def parse_gold_line(line: str) -> tuple[list[str], str | None]:
    """Gold keyphrases and source text of one gold line: a CMKP `*_src.txt` line
    `post<sep>kp1;kp2<sep>url` (source = the post) or a plain `kp1;kp2` line (source None)."""
    if SEP in line:
        fields = line.strip().split(SEP)
        source, field = fields[0].strip(), fields[1]
    else:
        source, field = None, line
    keyphrases = [kp.strip() for kp in field.strip().split(";")]
    if not all(keyphrases):
        raise ValueError(f"empty gold keyphrase in {field.strip()!r}")
    return keyphrases, source


def _read_lines(path) -> list[str]:
    # readlines() with universal newlines, as the authors' evaluator reads both files.
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def read_predictions(path) -> list[list[str]]:
    return [parse_prediction_line(line) for line in _read_lines(path)]


@dataclass
class GoldFile:
    keyphrases: list[list[str]]
    sources: list[str] | None  # post texts when the file is in the CMKP `<sep>` format


def read_gold(path) -> GoldFile:
    keyphrases, sources = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            kps, source = parse_gold_line(line)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
        keyphrases.append(kps)
        sources.append(source)
    kinds = {s is None for s in sources}
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes CMKP `<sep>` lines and plain `;` lines")
    return GoldFile(keyphrases, None if kinds == {True} else sources)


def read_sources(path, ocr_path=None) -> list[str]:
    """Source texts, one per line: the post field of a CMKP `*_src.txt` (or the whole line of a
    plain text file), with the OCR line appended after a single space when ocr_path is given (the
    authors' `tw_mm_s1_ocr` variant)."""
    sources = [line.strip().split(SEP)[0].strip() for line in _read_lines(path)]
    if ocr_path is not None:
        ocr = [line.strip() for line in _read_lines(ocr_path)]
        if len(ocr) != len(sources):
            raise ValueError(f"{ocr_path} has {len(ocr)} lines, {path} has {len(sources)}")
        sources = [f"{s} {o}" if o else s for s, o in zip(sources, ocr)]
    return sources
