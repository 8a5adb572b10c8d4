"""What each side of the unified ranking adds, on trained checkpoints: the beam alone, the beam with the
classifier (the paper's model), the keyphrase memory alone, and all three (the default model), side by side.

    .venv/bin/python benchmarks/bench_ranking.py --data build/cmkp-bench RUN_DIR [RUN_DIR ...]

Each run's checkpoint decodes the `valid` split once; the rankings re-rank the same candidates. Weights are
chosen on the split itself (as `cmkp-train` does) and, to show how optimistic that is, cross-fitted: chosen on
the even-numbered posts and scored on the odd ones, and the other way round (the column "cross-fit", the mean
of the two halves' scores, post-weighted). Prints per run and the mean over runs (F1@1 / F1@3 / MAP@5).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from model.beam import rank
from model.data import PostDataset, read_split
from model.metrics import compute_metrics
from model.train import RANK_WEIGHT_GRID, build_memory, load_checkpoint, split_candidates

KEYS = ("f1@1", "f1@3", "map@5")


def scores(candidates, gold, cls_weight, mem_weight, ranking="unified", posts=None) -> dict:
    posts = range(len(gold)) if posts is None else posts
    predictions = [rank(candidates[i], ranking, cls_weight, mem_weight, 10) or [""] for i in posts]
    return compute_metrics(predictions, [gold[i] for i in posts])


def best_weights(candidates, gold, grid, posts) -> tuple[float, float]:
    return max(grid, key=lambda w: scores(candidates, gold, *w, posts=posts)["f1@1"])


def rankings(candidates, gold) -> dict[str, tuple[dict, dict]]:
    """name -> (scores with weights chosen on all posts, cross-fitted scores)."""
    even, odd = range(0, len(gold), 2), range(1, len(gold), 2)
    grids = {"beam + classifier (paper)": tuple(dict.fromkeys((c, 0.0) for c, _ in RANK_WEIGHT_GRID)),
             "beam + classifier + memory (default)": RANK_WEIGHT_GRID}
    out = {"beam only": (scores(candidates, gold, 0.0, 0.0, "generator"),) * 2}
    memory_only = [(None, None, mem) for _, _, mem in candidates]
    out["memory only"] = (scores(memory_only, gold, 0.0, 1.0),) * 2
    for name, grid in grids.items():
        chosen = scores(candidates, gold, *best_weights(candidates, gold, grid, range(len(gold))))
        halves = [(scores(candidates, gold, *best_weights(candidates, gold, grid, fit), posts=held), len(held))
                  for fit, held in ((even, odd), (odd, even))]
        cross = {k: sum(s[k] * n for s, n in halves) / len(gold) for k in KEYS}
        out[name] = (chosen, cross)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the dataset the runs were trained on")
    parser.add_argument("runs", nargs="+", help="run directories of gen-cls-m3h-att (with model.pt)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, valid = read_split(args.data, "train"), read_split(args.data, "valid")
    gold = [p.keyphrases for p in valid.posts]
    table: dict[str, list] = {}
    for run in args.runs:
        model = load_checkpoint(f"{run}/model.pt")
        if model.memory is None:     # a checkpoint trained without the memory: build it from the same split
            model.memory = build_memory(PostDataset(train, model.vocabs, model.config), model.vocabs)
        candidates = split_candidates(model, PostDataset(valid, model.vocabs, model.config), "cpu")
        for name, result in rankings(candidates, gold).items():
            table.setdefault(name, []).append(result)
            print(f"{run}  {name:38s} " + "  ".join(
                f"{label} " + " / ".join(f"{s[k]:.2f}" for k in KEYS) for label, s in zip(("DEV", "cross-fit"), result)),
                file=sys.stderr)
    print(f"\nmean over {len(args.runs)} run(s), F1@1 / F1@3 / MAP@5 on {len(gold)} posts")
    print("| ranking | weights chosen on DEV | cross-fitted on DEV halves |\n| --- | --- | --- |")
    for name, results in table.items():
        cells = [" / ".join(f"{statistics.mean(r[j][k] for r in results):.2f}" for k in KEYS) for j in (0, 1)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
