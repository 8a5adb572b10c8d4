"""The learned ranking: each candidate keyphrase of a post scored by a linear function of what the model and the
keyphrase memory know about it, the weights fitted on DEV.

The unified ranking (model/beam.py `rank_scores`) adds three sides' scores with two weights chosen from a grid.
Other evidence is at hand and is not in any side's score: whether the keyphrase is in the post's own words (the
generator copies them, but its score does not say so), how often it was a keyphrase of the training posts, and
how close the post's meaning is to the training posts that carry it. A grid over more weights would grow
exponentially; a conditional logit over the post's candidates fits any number of them at once:

    score(kp | post) = sum over f of w_f x feature_f(kp, post)    (RANK_FEATURES)
    p(kp | post)     = softmax of the scores over the post's candidates (the union of the sides' lists)

w maximises the mean log p of the gold keyphrases among the candidates of the DEV posts that have one (an L2
penalty on the standardised weights keeps it finite when a feature separates the data). The figures:
docs/results.md, "The learned ranking".
"""
from __future__ import annotations

import math

import torch

from model.metrics import INVALID_TOKENS, stem_gold, stem_phrase

# one row per candidate; a side that did not list the keyphrase gives it 0
RANK_FEATURES = (
    "generator",       # q_gen: the softmax of the beam hypotheses' length-normalised log P (beam.rank_scores)
    "classifier",      # P_cls
    "memory",          # P_mem: the nearest training posts' vote (model/memory.py)
    "centroid",        # P_cent: the post's sentence embedding against each label's training posts' centroid
    "present",         # 1 when the keyphrase's words occur, in order and contiguous, in the post's source
    "log_frequency",   # log(1 + the training posts carrying it as a keyphrase); 0 for a keyphrase never seen
    "label",           # 1 for a training keyphrase (a classifier label)
    "words",           # the keyphrase's number of words
)
L2 = 0.01   # on the standardised weights


def is_present(keyphrase: str, source: list[str]) -> bool:
    words = keyphrase.split(" ")
    return any(source[i:i + len(words)] == words for i in range(len(source) - len(words) + 1))


def candidate_features(gen: list | None, sides: tuple[list | None, list | None, list | None], source: list[str],
                       label_counts: dict[str, int]) -> dict[str, list[float]]:
    """One post's candidates, generator hypotheses first, with their RANK_FEATURES rows: `gen` the beam's
    [(kp, summed log P, normalised log P)], `sides` the classifier's, the memory's and the centroids' [(kp, p)],
    `source` the tokens the encoder read, `label_counts` the training keyphrases' counts."""
    rows: dict[str, list[float]] = {}

    def row(kp: str) -> list[float]:
        if kp not in rows:
            count = label_counts.get(kp, 0)
            rows[kp] = [0.0, 0.0, 0.0, 0.0, float(is_present(kp, source)), math.log1p(count), float(count > 0),
                        float(len(kp.split(" ")))]
        return rows[kp]

    if gen:
        q_gen = torch.tensor([nm for _, _, nm in gen]).softmax(0).tolist()
        for (kp, _, _), q in zip(gen, q_gen):
            row(kp)[0] = q
    for column, side in enumerate(sides, 1):
        for kp, p in side or ():
            row(kp)[column] = p
    return rows


def learned_scores(features: dict[str, list[float]], weights) -> dict[str, float]:
    """One post's keyphrases with p(kp | post) under the fitted weights, best first (ties keep the candidates'
    order: generator hypotheses first). Probabilities, so that an ensemble can average them like the unified
    ranking's scores (beam.ensemble_scores)."""
    if not features:
        return {}
    if len(weights) != len(RANK_FEATURES):
        raise ValueError(f"the learned ranking needs {len(RANK_FEATURES)} weights ({', '.join(RANK_FEATURES)}), "
                         f"got {len(weights)}: fit them on DEV (train.select_rank_weight)")
    x = torch.tensor(list(features.values()), dtype=torch.float64)                 # [C, F]
    p = (x @ torch.tensor(weights, dtype=torch.float64)).softmax(0).tolist()
    return dict(sorted(zip(features, p), key=lambda item: item[1], reverse=True))


def fit(features: list[dict[str, list[float]]], gold: list[list[str]], l2: float = L2) -> list[float]:
    """The weights maximising the mean log p of the gold keyphrases (matched as the evaluator matches them:
    stemmed) among each post's candidates, over the posts with a gold candidate; a candidate the evaluator
    would drop (a token <unk>, ',' or '.') is left out. Deterministic for given inputs."""
    posts = []
    for rows, keyphrases in zip(features, gold):
        targets = set(stem_gold(keyphrases))
        kept = [(row, stem_phrase(kp) in targets) for kp, row in rows.items()
                if not INVALID_TOKENS.intersection(stem_phrase(kp))]
        if any(hit for _, hit in kept):
            posts.append(kept)
    if not posts:
        return [0.0] * len(RANK_FEATURES)
    width = max(len(p) for p in posts)
    x = torch.zeros(len(posts), width, len(RANK_FEATURES), dtype=torch.float64)    # [P, C, F]
    real = torch.zeros(len(posts), width, dtype=torch.bool)                       # [P, C]
    hit = torch.zeros(len(posts), width, dtype=torch.bool)
    for i, post in enumerate(posts):
        x[i, :len(post)] = torch.tensor([row for row, _ in post], dtype=torch.float64)
        real[i, :len(post)] = True
        hit[i, :len(post)] = torch.tensor([h for _, h in post])
    # standardised features give the penalty one scale; a constant shift does not change a post's softmax
    sd = x[real].std(0).clamp(min=1e-6)
    z = x / sd
    w = torch.zeros(len(RANK_FEATURES), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        s = (z @ w).masked_fill(~real, -math.inf)
        value = (s.logsumexp(1) - s.masked_fill(~hit, -math.inf).logsumexp(1)).mean() + l2 * (w * w).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return (w.detach() / sd).tolist()
