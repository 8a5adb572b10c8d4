"""Mean and standard deviation over seeds of the DEV scores and training speed of `cmkp-train` runs.

    .venv/bin/python benchmarks/collect_results.py RUNS_DIR

RUNS_DIR holds one run directory per (config, seed), named `<config>-s<seed>`, each with metrics.json and
train.log (one JSON line per epoch, with `train_cpu_s`). Prints a Markdown table. Decoding speed is not taken
from train.log (its figure is wall time of decoding plus the DEV ranking-weight search, on a shared machine):
measure it with benchmarks/bench_model.py.
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main(runs_dir: str) -> None:
    rows = defaultdict(lambda: defaultdict(list))
    for run in sorted(Path(runs_dir).iterdir()):
        metrics_file = run / "metrics.json"
        if not metrics_file.is_file() or "-s" not in run.name:
            continue
        config = run.name.rsplit("-s", 1)[0]
        dev = json.loads(metrics_file.read_text())["valid"]
        epochs = [json.loads(line) for line in (run / "train.log").read_text().splitlines() if line.strip()]
        r = rows[config]
        r["seeds"].append(run.name.rsplit("-s", 1)[1])
        for key in ("f1@1", "f1@3", "map@5"):
            r[key].append(dev[key])
        r["cpu"].append(statistics.mean(e["train_cpu_s"] for e in epochs))
        r["epochs"].append(len(epochs))
    print("| config | seeds | F1@1 | F1@3 | MAP@5 | train CPU-s / epoch | epochs run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config, r in rows.items():
        print(f"| {config} | {','.join(r['seeds'])} | {mean_std(r['f1@1'])} | {mean_std(r['f1@3'])} | "
              f"{mean_std(r['map@5'])} | {mean_std(r['cpu'])} | "
              f"{','.join(map(str, r['epochs']))} |")


if __name__ == "__main__":
    main(sys.argv[1])
