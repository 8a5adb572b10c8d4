"""Throughput of the text stages (posts per second) on the bundled sample corpus.

    .venv/bin/python benchmarks/bench_text_pipeline.py [--input ARCHIVE] [--posts N]

Writes the sample corpus with data/make_sample_corpus.py unless --input is given, builds the text half of the
dataset (BuildDataset --source archive, no feature groups) into a temporary directory with one Luigi worker,
and prints, per stage, the records read, the wall seconds Luigi measured and records per second, then the
whole run. Image fetching here reads the archive's local files (no network).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi

from pipeline.tasks import BuildDataset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="a twarc2 archive directory (default: a fresh sample corpus)")
    parser.add_argument("--posts", type=int, default=None, help="posts in the generated sample corpus")
    args = parser.parse_args()

    seconds: dict[str, float] = {}

    @luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
    def record(task, processing_time):
        family = task.task_family
        seconds[family] = seconds.get(family, 0.0) + processing_time

    with tempfile.TemporaryDirectory() as tmp:
        archive = args.input
        if archive is None:
            archive = str(Path(tmp) / "sample-src")
            command = [sys.executable, str(ROOT / "data" / "make_sample_corpus.py"), "--out", archive]
            if args.posts:
                command += ["--posts", str(args.posts)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        out = Path(tmp) / "out"
        start = time.perf_counter()
        ok = luigi.build([BuildDataset(source="archive", input=archive, output=str(out))],
                         local_scheduler=True, workers=1, log_level="WARNING")
        total = time.perf_counter() - start
        if not ok:
            sys.exit("the build failed")
        report = json.loads((out / "report.json").read_text())

    stage_family = {"crawl": "CrawlTweets", "filter": "FilterPosts", "images": "FetchImages",
                    "dedupe": "DedupeImages", "tokenize": "TokenizePosts", "hashtags": "FilterHashtags"}
    print(f"{'stage':<10}{'read':>8}{'kept':>8}{'seconds':>10}{'posts/s':>12}")
    for stage, counts in report["stages"].items():
        s = seconds.get(stage_family[stage], float("nan"))
        print(f"{stage:<10}{counts['read']:>8}{counts['kept']:>8}{s:>10.2f}{counts['read'] / s:>12.1f}")
    rest = sum(v for k, v in seconds.items() if k not in stage_family.values())
    print(f"{'shards etc.':<10}{'':>8}{sum(report['splits'].values()):>8}{rest:>10.2f}")
    read = report["stages"]["crawl"]["read"]
    print(f"whole text build: {read} posts read, {sum(report['splits'].values())} kept, {total:.2f} s wall "
          f"(incl. Luigi scheduling) -> {read / total:.1f} posts/s")


if __name__ == "__main__":
    main()
