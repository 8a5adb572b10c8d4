"""Do images help where only the image tells the keyphrase? An image model and a text-only model trained with
`cmkp-train` on a built sample dataset, scored side by side on the valid+test posts whose keyphrase only the
image shows (the sample corpus's `expected.json`, `image_only`) and on all valid+test posts.

    .venv/bin/python benchmarks/bench_image_only.py --data build/sample-img --out build/image-only \\
        [--configs cls-m3h-att cls-max] [--seeds 1 2 3] [--threads 2] [--reuse]
`--expected` defaults to `<input>/expected.json`, `<input>` being the corpus the dataset's manifest names.
Runs go to OUT/<config>-seed<S>; `--reuse` scores runs already there (their metrics.json exists) instead of
retraining. Scores (compute_metrics, percent) are pooled over valid+test per seed, then averaged over seeds.
The image features may come from seeded random weights (`--allow-random-features` is passed): what a random
VGG grid can carry is the identity of a repeated photo or rendering, not ImageNet semantics.
"""
import argparse
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from model.data import read_split
from model.metrics import compute_metrics

SCORED_SPLITS = ("valid", "test")
KEYS = ("f1@1", "f1@3", "map@5")


def train(data: Path, config: str, run_dir: Path, seed: int, threads: int, reuse: bool) -> None:
    if reuse and (run_dir / "metrics.json").exists():
        return
    command = [str(Path(sys.executable).with_name("cmkp-train")), "--data", str(data), "--config", config,
               "--out", str(run_dir), "--seed", str(seed), "--threads", str(threads),
               "--allow-random-features", "--quiet"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def read_predictions(path: Path, n: int) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != n:
        raise ValueError(f"{path}: {len(lines)} lines for {n} posts")
    return [line.split(";") for line in lines]


def score_run(run_dir: Path, posts: dict, subsets: dict[str, set[str]]) -> dict:
    """{subset name: metrics} over the scored splits' posts, pooled; `subsets` maps names to post ids."""
    predictions, gold, ids = [], [], []
    for split in SCORED_SPLITS:
        predictions += read_predictions(run_dir / f"pred_{split}.txt", len(posts[split]))
        gold += [p.keyphrases for p in posts[split]]
        ids += [p.post_id for p in posts[split]]
    out = {}
    for name, chosen_ids in subsets.items():
        chosen = [i for i, post_id in enumerate(ids) if post_id in chosen_ids]
        out[name] = compute_metrics([predictions[i] for i in chosen], [gold[i] for i in chosen])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--expected", type=Path, help="the sample corpus's expected.json")
    parser.add_argument("--configs", nargs="+", default=["cls-m3h-att", "cls-max"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()

    expected_path = args.expected
    if expected_path is None:
        manifest = json.loads((args.data / "manifest.json").read_text())
        expected_path = Path(manifest["input"]) / "expected.json"
    expected = json.loads(expected_path.read_text())["posts"]
    posts = {split: read_split(args.data, split).posts for split in SCORED_SPLITS}
    unknown = [p.post_id for split in SCORED_SPLITS for p in posts[split] if p.post_id not in expected]
    if unknown:
        raise ValueError(f"{len(unknown)} posts of {args.data} are not in {expected_path}, e.g. {unknown[:3]}")
    scored = [p for split in SCORED_SPLITS for p in posts[split]]
    image_only = [p for p in scored if expected[p.post_id]["image_only"]]
    # The photo posts can only be told by the image features; the rendered-text ones also by the OCR tokens.
    subsets = {
        "image-only": {p.post_id for p in image_only},
        "  photo": {p.post_id for p in image_only if expected[p.post_id]["kind"] == "image_photo"},
        "  text in image": {p.post_id for p in image_only if expected[p.post_id]["kind"] != "image_photo"},
        "all": {p.post_id for p in scored},
    }
    kinds = Counter(expected[p.post_id]["kind"] for p in image_only)
    labels = Counter(k for p in image_only for k in p.keyphrases)

    results = {}
    for config in args.configs:
        for seed in args.seeds:
            run_dir = args.out / f"{Path(config).stem}-seed{seed}"
            train(args.data, config, run_dir, seed, args.threads, args.reuse)
            results[config, seed] = score_run(run_dir, posts, subsets)

    print(f"\n{args.data}: {len(scored)} valid+test posts, {len(image_only)} whose keyphrase only the image shows "
          f"({', '.join(f'{k} {n}' for k, n in kinds.most_common())}); their keyphrases: "
          f"{', '.join(f'{k} {n}' for k, n in labels.most_common())}")
    print(f"seeds {' '.join(map(str, args.seeds))}; mean (population sd) over seeds, percent\n")
    print(f"| {'posts':16s} | {'n':>3s} | {'config':22s} | " + " | ".join(f"{k:>12s}" for k in KEYS) + " |")
    print(f"|{'-' * 18}|{'-' * 5}|{'-' * 24}|" + "|".join("-" * 14 for _ in KEYS) + "|")
    for subset, ids in subsets.items():
        for config in args.configs:
            cells = []
            for key in KEYS:
                values = [results[config, seed][subset][key] for seed in args.seeds]
                cells.append(f"{statistics.mean(values):5.1f} ({statistics.pstdev(values):4.1f})".rjust(12))
            print(f"| {subset:16s} | {len(ids):3d} | {Path(config).stem:22s} | " + " | ".join(cells) + " |")
    print("\nper seed, image-only F1@1: " + "; ".join(
        f"{Path(c).stem} " + " ".join(f"{results[c, s]['image-only']['f1@1']:.1f}" for s in args.seeds)
        for c in args.configs))

if __name__ == "__main__":
    main()
