"""Scale-out through a loopback luigid: one dataset built by 1 and by 2 worker processes, and a suite of 4
short training runs by 1 and by 2 workers, each next to the ideal speed-up that Amdahl's law gives from the
1-worker run.

    python benchmarks/bench_scale.py [--posts 512] [--out build/bench-scale]

The dataset is the sample corpus (`data/make_sample_corpus.py --posts N`) through the text stages and OCR,
in shards of `--shard-size` posts. Every task is one core's work in both builds, set explicitly and printed:
one Luigi worker per process, OpenMP/MKL/OpenBLAS at one thread, one Tesseract process per OCR shard (itself
at one OpenMP thread), one torch thread per training run. An idle worker asks for work again after 0.1 s plus
up to 0.1 s at random (`--wait-interval`, `--wait-jitter`; Luigi's default of 1 s plus up to 5 s suits tasks of
minutes, not these of seconds).

Amdahl's law from the 1-worker run: its parallel share P is the shard phase (from the first per-shard task's
start to the last one's end, less the dataset-wide tasks run inside it: the shard tasks and the scheduling
between them, which every worker does for its own tasks); everything else of its wall time W1 (worker start-up
and task-graph checks, the dataset-wide tasks, the final manifests) is serial. Ideal speed-up with n workers
= W1 / (W1 - P + P / n). The figure from task durations alone, (S + P') / (S + P' / n) with S and P' the summed
dataset-wide and per-shard task times, is printed beside it: it leaves out the run's serial start-up.

Beside it, what explains a shortfall: each build's summed task wall and CPU seconds (a task that waits for a
core has more wall than CPU seconds), the workers' CPU seconds outside their tasks, the scheduler's, the
machine's load (os.getloadavg) before and after each build, and how two CPU-bound processes share the machine
at the time (two at once against one alone). The last line, `efficiency: E`, is the dataset build's measured
speed-up divided by the ideal.
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
# One core per task, in both builds: the thread pools a task could start, each at one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_THREAD_LIMIT": "1"}
SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range({n}): x += i * i\nprint(time.perf_counter() - t)"


def load() -> str:
    return "load " + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


def scheduling_group() -> str:
    """Linux's autogroup: with it on, the CPU is shared between sessions first and a process's nice acts only
    inside its own session, so a `nice -n 19` job of another session still takes its share from this one; the
    benchmark's group nice (`echo N > /proc/self/autogroup` before starting it) is what gives it the cores."""
    flag = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not flag.exists() or flag.read_text().strip() != "1":
        return "autogroup off"
    return f"autogroup on, this run's group: {Path('/proc/self/autogroup').read_text().strip()}"


def process_cpu(pid: int) -> float:
    """CPU seconds of a live process (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scheduler_pid() -> int:
    """The benchmark's one live child between builds: the loopback luigid."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def two_processes_at_once(loops: int = 12_000_000) -> tuple[float, float]:
    """(seconds of one CPU-bound process alone, the mean of two such started together): what the machine gives
    two processes right now (2x its cores' worth only when the ratio is 1)."""
    def run(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", SPIN.format(n=loops)], stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        return sum(float(p.communicate()[0]) for p in procs) / n
    return run(1), run(2)


def run_workers(n: int, task_args: list[str], port: int, timeline: Path, log_dir: Path,
                worker_args: list[str]) -> tuple[float, list[float]]:
    """(wall seconds, each process's CPU seconds with its waited-for children) of `n` cmkp-worker processes
    (one Luigi worker each) finishing the tasks together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD, TIMELINE_ENV: str(timeline)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cluster", *task_args, "--workers", "1", *worker_args,
                               "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)],
                              cwd=ROOT, env=env, stdout=open(log_dir / f"worker-{n}-{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in range(n)]
    codes, cpu = [], []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        codes.append(p.returncode)
        cpu.append(usage.ru_utime + usage.ru_stime)
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); logs in {log_dir}")
    return wall, cpu


def amdahl(timeline: list[dict], wall: float, n: int) -> tuple[float, float]:
    """(the parallel share P of a 1-worker run of `wall` seconds, the ideal speed-up with n workers): P is the
    shard phase, less the dataset-wide tasks inside it; the rest of the wall time is serial."""
    shard = [t for t in timeline if t["family"] in SHARD_FAMILIES]
    first, last = min(t["start"] for t in shard), max(t["end"] for t in shard)
    inside = sum(min(t["end"], last) - max(t["start"], first) for t in timeline
                 if t["family"] not in SHARD_FAMILIES and t["end"] > first and t["start"] < last)
    parallel = last - first - inside
    return parallel, wall / (wall - parallel + parallel / n)


def amdahl_of_task_times(timeline: list[dict], n: int) -> float:
    """The ideal speed-up from summed task durations alone (serial: dataset-wide tasks; parallel: shard tasks)."""
    serial = sum(t["end"] - t["start"] for t in timeline if t["family"] not in SHARD_FAMILIES)
    parallel = sum(t["end"] - t["start"] for t in timeline if t["family"] in SHARD_FAMILIES)
    return (serial + parallel) / (serial + parallel / n)


def scheduling_lags(timeline: list[dict], wall: float, t0: float) -> str:
    """How long workers idled for want of being told: each worker's first task after the first per-shard task
    started anywhere (an idle worker asks again only after Luigi's wait_interval + a random wait_jitter), and the
    run's end after its last task (the workers noticing that the build is complete, and exiting)."""
    first_shard = min(t["start"] for t in timeline if t["family"] in SHARD_FAMILIES)
    late = []
    for pid in sorted({t["pid"] for t in timeline}):
        starts = [t["start"] for t in timeline if t["pid"] == pid and t["end"] > first_shard]
        if starts:
            late.append(f"{max(0.0, min(starts) - first_shard):.1f}")
    return (f"first task of each worker after the shard phase began: {', '.join(late)} s; wall after the last task: "
            f"{t0 + wall - max(t['end'] for t in timeline):.1f} s")


def timeline_lines(timeline: list[dict], wall: float, t0: float) -> list[str]:
    """Per worker process: its tasks as a bar over the run's wall time (one character = 1/60 of it)."""
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


def families(timelines: dict[int, list[dict]]) -> list[str]:
    """Per task family: count, and mean wall and CPU seconds per task in each build."""
    lines = [f"  {'family':<16} {'tasks':>5}  " + "  ".join(f"{n} worker{'s' * (n > 1)}: wall / CPU s" for n in timelines)]
    names = sorted({t["family"] for t in timelines[1]},
                   key=lambda f: -sum(t["end"] - t["start"] for t in timelines[1] if t["family"] == f))
    for family in names:
        cells = []
        for timeline in timelines.values():
            tasks = [t for t in timeline if t["family"] == family]
            cells.append(f"{sum(t['end'] - t['start'] for t in tasks) / len(tasks):10.2f} / "
                         f"{sum(t['cpu'] for t in tasks) / len(tasks):5.2f}")
        lines.append(f"  {family:<16} {len(tasks):>5}  " + "  ".join(f"{c:>29}" for c in cells))
    return lines


def compare(name: str, task_args_of, out: Path, port: int, worker_args: list[str]) -> float:
    """Run the tasks with 1 and with 2 workers; print the comparison; return the efficiency."""
    runs = {}
    luigid = scheduler_pid()
    for n in (1, 2):
        work = out / f"{name.replace(' ', '-')}-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        timeline = work / "timeline.jsonl"
        before, luigid_cpu, t0 = load(), process_cpu(luigid), time.time()
        wall, worker_cpu = run_workers(n, task_args_of(work), port, timeline, work, worker_args)
        runs[n] = {"wall": wall, "t0": t0, "timeline": read_timeline(timeline), "worker_cpu": worker_cpu,
                   "luigid_cpu": process_cpu(luigid) - luigid_cpu, "load": (before, load())}
    one, two = runs[1], runs[2]
    parallel, ideal = amdahl(one["timeline"], one["wall"], 2)
    measured = one["wall"] / two["wall"]
    print(f"\n{name}: {len(one['timeline'])} tasks")
    print("\n".join(families({n: r["timeline"] for n, r in runs.items()})))
    for n, r in runs.items():
        tasks = r["timeline"]
        task_wall, task_cpu = sum(t["end"] - t["start"] for t in tasks), sum(t["cpu"] for t in tasks)
        print(f"{n} worker{'s' * (n > 1)}: {r['wall']:7.1f} s wall; tasks {task_wall:.1f} s wall, {task_cpu:.1f} CPU-s "
              f"(CPU / wall {task_cpu / task_wall:.2f}); worker processes {sum(r['worker_cpu']):.1f} CPU-s, of which "
              f"outside tasks {sum(r['worker_cpu']) - task_cpu:.1f}; luigid {r['luigid_cpu']:.1f} CPU-s; "
              f"{r['load'][0]} before, {r['load'][1]} after")
        print("\n".join(timeline_lines(tasks, r["wall"], r["t0"])))
        print(f"  {scheduling_lags(tasks, r['wall'], r['t0'])}")
    print(f"{name}: 1-worker wall {one['wall']:.1f} s, of which parallel (the shard phase) {parallel:.1f} s, "
          f"serial {one['wall'] - parallel:.1f} s")
    efficiency = measured / ideal
    print(f"{name}: speed-up {measured:.2f}x, ideal {ideal:.2f}x (Amdahl; from task durations alone "
          f"{amdahl_of_task_times(one['timeline'], 2):.2f}x), efficiency {efficiency:.2f}")
    return efficiency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=512, help="sample corpus size (make_sample_corpus.py --posts)")
    ap.add_argument("--shard-size", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-scale")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each of the 4 training runs")
    # Its tasks take seconds: Luigi's idle wait (1 s plus up to 5 s at random, sized for a cluster's minutes-long
    # shards and luigid's load) would leave a worker idle for a good part of a shard phase (docs/scaling.md).
    ap.add_argument("--wait-interval", type=float, default=0.1,
                    help="seconds an idle worker sleeps before asking for work again ([worker] wait_interval)")
    ap.add_argument("--wait-jitter", type=float, default=0.1,
                    help="the random part added to it ([worker] wait_jitter)")
    args = ap.parse_args()
    out = args.out.resolve()
    corpus = out / "src"
    if not (corpus / "expected.json").exists():
        subprocess.run([sys.executable, str(ROOT / "data" / "make_sample_corpus.py"), "--out", str(corpus),
                        "--posts", str(args.posts)], check=True, stdout=subprocess.DEVNULL)
    worker_args = ["--worker-wait-interval", str(args.wait_interval), "--worker-wait-jitter", str(args.wait_jitter)]
    print(f"machine: {os.cpu_count()} cores; {load()}; {scheduling_group()}; corpus {args.posts} posts, shards of "
          f"{args.shard_size}")
    print("per task: one Luigi worker per process, " + " ".join(f"{k}={v}" for k, v in ONE_THREAD.items())
          + ", RunOCR 1 Tesseract process, training --threads 1; worker options: " + " ".join(worker_args))
    alone, together = two_processes_at_once()
    print(f"machine now: a CPU-bound process {alone:.2f} s alone, {together:.2f} s each with two at once "
          f"(two processes get {2 * alone / together:.2f}x one's work done)")

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
        efficiency = compare("dataset build", build_args, out, port, worker_args)
        compare("training suite", suite_args, out, port, worker_args)
    alone, together = two_processes_at_once()
    print(f"machine at the end: {load()}; a CPU-bound process {alone:.2f} s alone, {together:.2f} s each with two "
          f"at once ({2 * alone / together:.2f}x)")
    print(f"efficiency: {efficiency:.2f}")


if __name__ == "__main__":
    main()
