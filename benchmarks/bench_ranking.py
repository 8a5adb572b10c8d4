"""What each side of the unified ranking adds, on trained checkpoints: the beam alone, the beam with the
classifier (the paper's model), the keyphrase memory alone (TF-IDF, and hybrid with the posts' sentence
embeddings), the unified ranking with either memory, the learned ranking (model/ranker.py; runs whose memory is
hybrid), and the ensemble of the runs.

    .venv/bin/python benchmarks/bench_ranking.py --data DATASET RUN_DIR [RUN_DIR ...]

Each run's checkpoint decodes the `valid` split once; the rankings re-rank the same candidates (the memory's
side is recomputed from the training split for each hybrid weight, which costs no training). The dataset
needs the `text_embedding` group for the hybrid rows. Weights are chosen as `cmkp-train` does (the hybrid
weight by the memory's own F1@1, then the ranking's two weights; the learned ranking's weights fitted, with the
run's own hybrid memory) on the split itself and, to show how optimistic that is, cross-fitted: chosen on the even-numbered posts and scored on the odd ones, and the other way round.
The ensemble averages the runs' ranking scores (beam.ensemble_rank), each run with the weights it was given.
Prints per run and mean ± sd over runs (F1@1 / F1@3 / MAP@5).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import torch

from model import ranker
from model.beam import ensemble_rank, rank_scores
from model.data import PostDataset, read_split
from model.metrics import compute_metrics
from model.train import (MEMORY_EMBEDDING_GRID, RANK_WEIGHT_GRID, build_memory, load_checkpoint,
                         memory_candidates, split_candidates)

KEYS = ("f1@1", "f1@3", "map@5")
PAPER_GRID = tuple(dict.fromkeys((c, 0.0) for c, _ in RANK_WEIGHT_GRID))
# name -> (ranking, which sides: "all" or "memory", the (classifier, memory) weight grid, hybrid memory);
# the learned ranking's weights are fitted (no grid)
VARIANTS = {
    "beam only": ("generator", "all", ((0.0, 0.0),), False),
    "memory only (TF-IDF)": ("unified", "memory", ((0.0, 1.0),), False),
    "memory only (hybrid)": ("unified", "memory", ((0.0, 1.0),), True),
    "beam + classifier (paper)": ("unified", "all", PAPER_GRID, False),
    "beam + classifier + memory (default)": ("unified", "all", RANK_WEIGHT_GRID, False),
    "beam + classifier + hybrid memory": ("unified", "all", RANK_WEIGHT_GRID, True),
    "learned ranking": ("learned", "all", None, True),
}
ENSEMBLED = ("beam + classifier + memory (default)", "beam + classifier + hybrid memory", "learned ranking")


def metrics(rankings: dict[int, dict], gold) -> dict:
    """Scores of per-post ranking scores {post: {keyphrase: score}} (posts in any order)."""
    posts = sorted(rankings)
    return compute_metrics([ensemble_rank([rankings[i]], 10) or [""] for i in posts], [gold[i] for i in posts])


def post_scores(candidates, ranking, weights, posts) -> dict[int, dict]:
    return {i: rank_scores(candidates[i], ranking, *weights) for i in posts}


def fit(variant, candidates, memory_by_weight, gold, posts):
    """The variant's candidates and its (classifier, memory) weights chosen on `posts`, as cmkp-train does."""
    ranking, sides, grid, hybrid = VARIANTS[variant]
    if ranking == "learned":
        return candidates, (0.0, 0.0, ranker.fit([candidates[i][3] for i in posts], [gold[i] for i in posts]))

    def with_memory(memory):
        if sides == "memory":
            return [(None, None, m) for m in memory]
        return [(g, c, m) for (g, c, _, _), m in zip(candidates, memory)]

    memory = memory_by_weight[0.0]
    if hybrid:      # the hybrid weight by the memory's own F1@1 (ties: the smaller weight), as cmkp-train does
        def memory_alone(w):
            alone = [(None, None, m) for m in memory_by_weight[w]]
            return metrics(post_scores(alone, "unified", (0.0, 1.0), posts), gold)["f1@1"]
        memory = memory_by_weight[max(MEMORY_EMBEDDING_GRID, key=memory_alone)]
    chosen = with_memory(memory)
    weights = max(grid, key=lambda w: metrics(post_scores(chosen, ranking, w, posts), gold)["f1@1"])
    return chosen, weights


def run_rankings(candidates, learned_candidates, memory_by_weight, gold) -> dict[str, dict[str, dict[int, dict]]]:
    """variant -> {"DEV": per-post scores with weights chosen on all posts, "cross-fit": on the other half}; the
    learned ranking only given its candidates (`learned_candidates`, else None)."""
    every, even, odd = range(len(gold)), range(0, len(gold), 2), range(1, len(gold), 2)
    out = {}
    for variant in VARIANTS:
        ranking = VARIANTS[variant][0]
        if ranking == "learned":
            if learned_candidates is None:
                continue
            candidates = learned_candidates
        chosen, weights = fit(variant, candidates, memory_by_weight, gold, every)
        cross = {}
        for fit_posts, held in ((even, odd), (odd, even)):
            half, half_weights = fit(variant, candidates, memory_by_weight, gold, fit_posts)
            cross.update(post_scores(half, ranking, half_weights, held))
        out[variant] = {"DEV": post_scores(chosen, ranking, weights, every), "cross-fit": cross}
    return out


def cell(results: list[dict]) -> str:
    if len(results) == 1:
        return " / ".join(f"{results[0][k]:.2f}" for k in KEYS)
    return " / ".join(f"{statistics.mean(r[k] for r in results):.2f} ± {statistics.stdev(r[k] for r in results):.2f}"
                      for k in KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the dataset the runs were trained on")
    parser.add_argument("runs", nargs="+", help="run directories of gen-cls-m3h-att (with model.pt)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, valid = read_split(args.data, "train"), read_split(args.data, "valid")
    gold = [p.keyphrases for p in valid.posts]
    per_run = []
    for run in args.runs:
        model = load_checkpoint(f"{run}/model.pt")
        if model.config.memory_embedding:   # candidates with their features too: the learned ranking's
            model.config = dataclasses.replace(model.config, ranking="learned")
        candidates = split_candidates(model, PostDataset(valid, model.vocabs, model.config), "cpu")
        learned = candidates if model.config.ranking == "learned" else None
        hybrid = dataclasses.replace(model.config, memory=True, memory_embedding=True)
        memory = build_memory(PostDataset(train, model.vocabs, hybrid), model.vocabs)
        hybrid_valid = PostDataset(valid, model.vocabs, hybrid)
        gen = [g for g, *_ in candidates]
        memory_by_weight = {w: memory_candidates(memory, hybrid_valid, model.vocabs.labels, model.config.n_best,
                                                 "cpu", w, gen) for w in MEMORY_EMBEDDING_GRID}
        per_run.append(run_rankings(candidates, learned, memory_by_weight, gold))
        for variant, schemes in per_run[-1].items():
            print(f"{run}  {variant:38s} " + "  ".join(f"{scheme} " + cell([metrics(s, gold)])
                                                       for scheme, s in schemes.items()), file=sys.stderr)
    print(f"\n{len(args.runs)} run(s), F1@1 / F1@3 / MAP@5 on {len(gold)} DEV posts, mean ± sd over runs")
    print("| ranking | weights chosen on DEV | cross-fitted on DEV halves |\n| --- | --- | --- |")
    for variant in (v for v in VARIANTS if all(v in r for r in per_run)):
        print(f"| {variant} | " + " | ".join(cell([metrics(r[variant][scheme], gold) for r in per_run])
                                          for scheme in ("DEV", "cross-fit")) + " |")
    if len(per_run) > 1:
        for variant in (v for v in ENSEMBLED if all(v in r for r in per_run)):
            cells = []
            for scheme in ("DEV", "cross-fit"):
                posts = per_run[0][variant][scheme]
                mean = {i: {} for i in posts}
                for i in posts:
                    ranked = ensemble_rank([r[variant][scheme][i] for r in per_run], 10)
                    mean[i] = {kp: -j for j, kp in enumerate(ranked)}      # the ensemble's order as scores
                cells.append(cell([metrics(mean, gold)]))
            print(f"| ensemble of the {len(per_run)} runs: {variant} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
