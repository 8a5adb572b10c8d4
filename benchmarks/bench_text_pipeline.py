"""Throughput of the text stages (posts per second) on the bundled sample corpus.

    .venv/bin/python benchmarks/bench_text_pipeline.py [--input ARCHIVE] [--posts N]

Writes the sample corpus with data/make_sample_corpus.py unless --input is given, builds the text half of the
dataset (BuildDataset --source archive, no feature groups) into a temporary directory with one Luigi worker,
and prints, per stage, the records read, the wall seconds Luigi measured and records per second, then the
whole run. Image fetching here reads the archive's local files (no network).

Then the image stage is run again twice, side by side: afresh (its journal deleted) and resumed from its journal
(as after a kill), to show what resuming saves.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi

from pipeline.tasks import BuildDataset
from pipeline.text_tasks import FetchImages

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
        build_seconds = dict(seconds)  # the build's own figures, before the reruns below add to them
        rerun = {"afresh": time_image_stage(archive, out, keep_journal=False),
                 "resumed": time_image_stage(archive, out, keep_journal=True)}

    stage_family = {"crawl": "CrawlTweets", "filter": "FilterPosts", "images": "FetchImages",
                    "dedupe": "DedupeImages", "tokenize": "TokenizePosts", "hashtags": "FilterHashtags"}
    print(f"{'stage':<10}{'read':>8}{'kept':>8}{'seconds':>10}{'posts/s':>12}")
    for stage, counts in report["stages"].items():
        s = build_seconds.get(stage_family[stage], float("nan"))
        print(f"{stage:<10}{counts['read']:>8}{counts['kept']:>8}{s:>10.2f}{counts['read'] / s:>12.1f}")
    rest = sum(v for k, v in build_seconds.items() if k not in stage_family.values())
    print(f"{'shards etc.':<10}{'':>8}{sum(report['splits'].values()):>8}{rest:>10.2f}")
    read = report["stages"]["crawl"]["read"]
    print(f"whole text build: {read} posts read, {sum(report['splits'].values())} kept, {total:.2f} s wall "
          f"(incl. Luigi scheduling) -> {read / total:.1f} posts/s")
    print(f"image stage rerun: afresh {rerun['afresh']:.2f} s, resumed from its journal {rerun['resumed']:.2f} s "
          f"-> {rerun['afresh'] / rerun['resumed']:.1f}x faster")


def time_image_stage(archive: str, out: Path, keep_journal: bool) -> float:
    """Wall seconds of FetchImages run again on a built dataset, with or without its journal."""
    shutil.rmtree(out / "work" / "images")
    if not keep_journal:
        (out / "work" / "images-journal.jsonl").unlink()
    start = time.perf_counter()
    if not luigi.build([FetchImages(source="archive", input_path=archive, dataset_dir=str(out))],
                       local_scheduler=True, workers=1, log_level="WARNING"):
        sys.exit("the image stage failed")
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
