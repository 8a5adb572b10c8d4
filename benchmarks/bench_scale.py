"""Scale-out through a loopback luigid: one dataset built by 1 and by 2 worker processes, and a suite of 4
short training runs by 1 and by 2 workers, each next to the ideal speed-up that Amdahl's law gives from the
task durations measured in the 1-worker run.

    python benchmarks/bench_scale.py [--posts 512] [--out build/bench-scale]

The dataset is the sample corpus (`data/make_sample_corpus.py --posts N`) through the text stages and OCR
(one Tesseract process per task, so that a task is one core's work), in shards of `--shard-size` posts. The
serial share is the dataset-wide tasks (everything that is not a per-shard task), the parallel share the
per-shard tasks; ideal speed-up with n workers = (S + P) / (S + P / n). The last line, `efficiency: E`, is the
dataset build's measured speed-up divided by that ideal.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cluster import TIMELINE_ENV, loopback_scheduler, read_timeline  # noqa: E402

SHARD_FAMILIES = {"TextShard", "RunOCR", "AssembleShard", "TrainRun"}


def run_workers(n: int, task_args: list[str], port: int, timeline: Path, log_dir: Path) -> float:
    """Wall seconds for `n` cmkp-worker processes (one Luigi worker each) to finish the tasks together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           TIMELINE_ENV: str(timeline)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cluster", *task_args, "--workers", "1",
                               "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)],
                              cwd=ROOT, env=env, stdout=open(log_dir / f"worker-{n}-{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); logs in {log_dir}")
    return wall


def amdahl(timeline: list[dict], n: int) -> tuple[float, float, float]:
    """(serial seconds, parallel seconds, ideal speed-up with n workers) from a 1-worker timeline."""
    serial = sum(t["end"] - t["start"] for t in timeline if t["family"] not in SHARD_FAMILIES)
    parallel = sum(t["end"] - t["start"] for t in timeline if t["family"] in SHARD_FAMILIES)
    return serial, parallel, (serial + parallel) / (serial + parallel / n)


def timeline_lines(timeline: list[dict], wall: float) -> list[str]:
    """Per worker process: its tasks as a bar over the run's wall time (one character = 1/60 of it)."""
    t0 = min(t["start"] for t in timeline)
    by_worker = defaultdict(list)
    for t in timeline:
        by_worker[(t["host"], t["pid"])].append(t)
    lines = []
    for (host, pid), tasks in sorted(by_worker.items()):
        bar = [" "] * 60
        for t in tasks:
            a = int(60 * (t["start"] - t0) / wall)
            b = max(a + 1, int(60 * (t["end"] - t0) / wall))
            mark = "#" if t["family"] in SHARD_FAMILIES else "="
            for i in range(a, min(b, 60)):
                bar[i] = mark
        busy = sum(t["end"] - t["start"] for t in tasks)
        lines.append(f"  {host}:{pid:<8} |{''.join(bar)}| {len(tasks):>3} tasks, busy {busy:6.1f} s")
    return lines


def families(timeline: list[dict]) -> list[str]:
    total = defaultdict(float)
    count = defaultdict(int)
    for t in timeline:
        total[t["family"]] += t["end"] - t["start"]
        count[t["family"]] += 1
    return [f"  {family:<16} {count[family]:>4} x {total[family] / count[family]:7.2f} s = {total[family]:7.1f} s"
            for family in sorted(total, key=total.get, reverse=True)]


def compare(name: str, task_args_of, out: Path, port: int) -> float:
    """Run the tasks with 1 and with 2 workers; print the comparison; return the efficiency."""
    results = {}
    for n in (1, 2):
        work = out / f"{name.replace(' ', '-')}-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        timeline = work / "timeline.jsonl"
        wall = run_workers(n, task_args_of(work), port, timeline, work)
        results[n] = (wall, read_timeline(timeline))
    wall1, timeline1 = results[1]
    wall2, timeline2 = results[2]
    serial, parallel, ideal = amdahl(timeline1, 2)
    measured = wall1 / wall2
    print(f"\n{name}: {len(timeline1)} tasks; serial {serial:.1f} s, parallel {parallel:.1f} s (1-worker task times)")
    print("\n".join(families(timeline1)))
    print(f"1 worker:  {wall1:7.1f} s wall")
    print("\n".join(timeline_lines(timeline1, wall1)))
    print(f"2 workers: {wall2:7.1f} s wall")
    print("\n".join(timeline_lines(timeline2, wall2)))
    efficiency = measured / ideal
    print(f"{name}: speed-up {measured:.2f}x, ideal {ideal:.2f}x (Amdahl), efficiency {efficiency:.2f}")
    return efficiency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=512, help="sample corpus size (make_sample_corpus.py --posts)")
    ap.add_argument("--shard-size", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-scale")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each of the 4 training runs")
    args = ap.parse_args()
    out = args.out.resolve()
    corpus = out / "src"
    if not (corpus / "expected.json").exists():
        subprocess.run([sys.executable, str(ROOT / "data" / "make_sample_corpus.py"), "--out", str(corpus),
                        "--posts", str(args.posts)], check=True, stdout=subprocess.DEVNULL)
    print(f"machine: {os.cpu_count()} cores; corpus {args.posts} posts, shards of {args.shard_size}")

    def build_args(work: Path) -> list[str]:
        return ["--module", "pipeline.tasks", "BuildDataset", "--source", "archive", "--input", str(corpus),
                "--output", str(work / "dataset"), "--features", '["ocr"]',
                "--SplitPosts-shard-size", str(args.shard_size), "--RunOCR-workers", "1"]

    def suite_args(work: Path) -> list[str]:
        return ["--module", "workflows.experiments", "SeedSuite", "--config", "gen-copy", "--seeds", "1,2,3,4",
                "--shards-dir", str(out / "dataset-build-1" / "dataset"), "--work-dir", str(work / "suite"),
                "--epochs", str(args.epochs), "--threads", "1", "--device", "cpu",
                "--train-args=--quiet"]

    # Two of each resource: the two workers may both run an OCR shard (each a one-process pool here).
    with loopback_scheduler(out / "luigid", "[resources]\ncpu = 2\ngpu = 2\n") as port:
        efficiency = compare("dataset build", build_args, out, port)
        compare("training suite", suite_args, out, port)
    print(f"efficiency: {efficiency:.2f}")


if __name__ == "__main__":
    main()
