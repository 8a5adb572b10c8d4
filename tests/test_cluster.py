"""One dataset built by several worker processes through a central scheduler (luigid on loopback).

The sample corpus (the generator's smallest size) through the text stages, OCR and VGG grids (seeded random
weights, small images), in shards of 40 posts:
three `cmkp-worker` processes together, then a build whose worker is killed in the middle of an OCR shard.
Each must run every task exactly once (the killed one once more, elsewhere) and give the same bytes as a
single-worker build with the local scheduler.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.cluster import loopback_scheduler

ROOT = Path(__file__).resolve().parents[1]
POSTS = 512
# OCR (a `cpu` task) and VGG grids from seeded random weights at 32 px (a `gpu` task, run on the CPU here)
BUILD = ["--module", "pipeline.tasks", "BuildDataset", "--source", "archive", "--features", '["ocr", "vgg"]',
         "--SplitPosts-shard-size", "40", "--ExtractVGG-vgg-weights", "random:0", "--ExtractVGG-vgg-image-size", "32",
         "--ExtractVGG-device", "cpu", "--workers", "1"]
# Luigi's worker log lines: "... Worker(...) running   Task(...)" and "... Worker(...) done      Task(...)"
LOG_LINE = re.compile(r"\) (running|done) +(\w+\(.*\))$")
TIMEOUT = 300
DYNAMIC = ("SplitManifest(", "BuildDataset(")       # the tasks that yield dynamic dependencies

pytestmark = pytest.mark.slow


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def luigi_command() -> list[str]:
    return [sys.executable, "-c", "import sys, luigi.cmdline; sys.argv[0] = 'luigi'; luigi.cmdline.luigi_run()"]


def worker_command(corpus: Path, out: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.cluster", *BUILD, "--input", str(corpus), "--output", str(out),
            "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)]


def task_lines(log: Path, what: str) -> list[str]:
    return [m.group(2) for line in log.read_text().splitlines()
            if (m := LOG_LINE.search(line)) and m.group(1) == what]


def dataset_files(directory: Path) -> dict[str, bytes]:
    """Every file of a dataset but its work area (journals and stage directories are build-private)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).parts[0] != "work"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "src"
    subprocess.run([sys.executable, str(ROOT / "data" / "make_sample_corpus.py"), "--out", str(out),
                    "--posts", str(POSTS)], check=True, env=environment(), capture_output=True, timeout=TIMEOUT)
    return out


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "ds"
    subprocess.run([*luigi_command(), *BUILD, "--input", str(corpus), "--output", str(out), "--local-scheduler"],
                   check=True, cwd=ROOT, env=environment(), capture_output=True, timeout=TIMEOUT)
    files = dataset_files(out)
    assert "manifest.json" in files and any(name.startswith("train/shard-") for name in files)
    return files


@pytest.fixture
def luigid(tmp_path):
    """Dead workers are noticed after 2 s and their tasks retried after 1 s (the defaults, 60 s and 900 s,
    suit a cluster, not a test)."""
    with loopback_scheduler(tmp_path / "luigid", "[scheduler]\nworker_disconnect_delay = 2\nretry_delay = 1\n") as port:
        yield port


def start_worker(corpus: Path, out: Path, port: int, log: Path) -> subprocess.Popen:
    # Its own session, so that a kill reaches the worker's OCR processes too.
    return subprocess.Popen(worker_command(corpus, out, port), cwd=ROOT, env=environment(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_three_workers_build_one_dataset_each_task_once(corpus, reference, luigid, tmp_path):
    out = tmp_path / "ds"
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    workers = []
    for log in logs:        # staggered: the later ones join while the dataset-wide stages run
        workers.append(start_worker(corpus, out, luigid, log))
        time.sleep(1.0)
    for worker in workers:
        assert worker.wait(timeout=TIMEOUT) == 0

    done = [task for log in logs for task in task_lines(log, "done")]
    assert len(done) == len(set(done)), "a task ran to completion twice"
    # nor started twice: a task runs once, except those with dynamic dependencies, run again (by any worker)
    # once their dependencies are complete
    started = Counter(task for log in logs for task in task_lines(log, "running"))
    assert [task for task, n in started.items() if n > 1 and not task.startswith(DYNAMIC)] == []
    assert set(started) == set(done)
    n_shards = len([f for f in reference if re.fullmatch(r"\w+/shard-\d+\.h5", f)])
    for family in ("RunOCR(", "ExtractVGG("):
        assert len([task for task in done if task.startswith(family)]) == n_shards, family
    busy = [log for log in logs if any(t.startswith(("RunOCR(", "ExtractVGG(", "TextShard(", "AssembleShard("))
                                       for t in task_lines(log, "done"))]
    assert len(busy) >= 2, "the shard tasks were not spread over the workers"
    assert dataset_files(out) == reference


def test_a_worker_killed_mid_task_is_replaced_by_another(corpus, reference, luigid, tmp_path):
    out = tmp_path / "ds"
    victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
    victim = start_worker(corpus, out, luigid, victim_log)
    deadline = time.monotonic() + TIMEOUT
    while not any(t.startswith("RunOCR(") for t in task_lines(victim_log, "running")):
        assert victim.poll() is None and time.monotonic() < deadline, "the worker never reached an OCR shard"
        time.sleep(0.05)
    survivor = start_worker(corpus, out, luigid, survivor_log)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    interrupted = set(task_lines(victim_log, "running")) - set(task_lines(victim_log, "done"))
    interrupted_ocr = [t for t in interrupted if t.startswith("RunOCR(")]
    assert interrupted_ocr, "the kill came after the OCR shard had finished"

    assert survivor.wait(timeout=TIMEOUT) == 0
    redone = task_lines(survivor_log, "done")
    assert set(interrupted_ocr) <= set(redone)
    assert len(redone) == len(set(redone))
    assert dataset_files(out) == reference


def declining_worker(jobs: Path, port: int, name: str, decline: str = "") -> subprocess.Popen:
    """A cmkp-worker on the test tasks of tests/cluster_tasks.py, as host `name`, declining `decline`."""
    command = [sys.executable, "-m", "pipeline.cluster", "--module", "cluster_tasks", "Jobs", "--directory",
               str(jobs), "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--workers", "1"]
    env = {**environment(), "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "CLUSTER_TEST_WORKER": name}
    return subprocess.Popen(command + (["--cluster-worker-decline", decline] if decline else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_host_that_declines_gpu_tasks_never_takes_one_and_works_on_the_rest(tmp_path):
    jobs = tmp_path / "jobs"
    with loopback_scheduler(tmp_path / "luigid") as port:
        cpu_host = declining_worker(jobs, port, "cpu-host", decline="gpu")
        time.sleep(3)   # alone for a while: every GPU job it could have taken is runnable meanwhile
        assert not list(jobs.glob("gpu-*")), "a GPU job ran before any worker that takes GPU jobs had joined"
        gpu_host = declining_worker(jobs, port, "gpu-host")
        for worker in (cpu_host, gpu_host):
            output, _ = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode == 0, output[-3000:]
    ran = {path.name: path.read_text() for path in jobs.iterdir()}
    assert {ran[f"gpu-{i}"] for i in range(4)} == {"gpu-host"}
    assert "cpu-host" in {ran[f"cpu-{i}"] for i in range(4)}


def test_a_declining_worker_given_a_declined_task_by_a_plain_luigid_stops_without_running_it(tmp_path):
    jobs = tmp_path / "jobs"
    with loopback_scheduler(tmp_path / "luigid", honour_declines=False) as port:
        worker = declining_worker(jobs, port, "cpu-host", decline="gpu")
        output, _ = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode != 0 and "run the scheduler as cmkp-scheduler" in output
    assert not list(jobs.glob("gpu-*"))
