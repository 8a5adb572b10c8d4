"""`cmkp-worker`: the workers of one host in a build that many hosts share through Luigi's central scheduler.

    luigid --port 8082 --state-path STATE --logdir LOGS                       # once, on one host
    cmkp-worker --module pipeline.tasks BuildDataset --source S --input I --output OUT \
        --scheduler-host HOST --workers K                                     # on every host, any number

It takes the same arguments as `luigi` (docs/scaling.md). Why not the `luigi` command itself: a stock Luigi
worker runs only tasks it scheduled itself and quits once none of them is pending, but a dataset's shard
tasks exist only as dynamic dependencies of the worker that ran the split (their number is known only then),
so every other worker would leave as soon as the dataset-wide stages started. A cmkp worker is an *assistant*
(it takes any runnable task the scheduler holds) that stays until the tasks it was given are complete, or
until none of them is pending or running anywhere (a task disabled after its retries: then it exits non-zero).

The exit code is 0 when every task on the command line is complete at the end, and Luigi's `[retcode]
task_failed` otherwise, whichever worker ran what: in a shared build, tasks run by other workers are the norm.

With `CMKP_TASK_TIMELINE=FILE` in its environment, each worker appends a JSON line per task it completed
(task id, family, start, end, host, pid) to FILE: the timeline that benchmarks/bench_scale.py reads.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import luigi
import luigi.interface
import luigi.retcodes
import luigi.worker

TIMELINE_ENV = "CMKP_TASK_TIMELINE"


class ClusterWorker(luigi.worker.Worker):
    """A Luigi assistant worker that stays while the tasks it was given are incomplete and still being worked on."""

    def __init__(self, *args, **kwargs):
        kwargs["assistant"] = True
        super().__init__(*args, **kwargs)
        self.root_tasks: list[luigi.Task] = []

    def add(self, task, *args, **kwargs):
        self.root_tasks.append(task)
        return super().add(task, *args, **kwargs)

    def roots_complete(self) -> bool:
        return all(task.complete() for task in self.root_tasks)

    def _keep_alive(self, get_work_response) -> bool:
        if self.roots_complete():
            return False
        # Pending (or failed, awaiting its retry) tasks of this worker's graph, or some of them running on
        # another worker: there is, or will be, work for this one. Neither: what is left can never run.
        return get_work_response.n_pending_tasks > 0 or bool(get_work_response.running_tasks)


class ClusterWorkerFactory(luigi.interface._WorkerSchedulerFactory):
    def create_worker(self, scheduler, worker_processes, assistant=False):
        return ClusterWorker(scheduler=scheduler, worker_processes=worker_processes)


def record_task_time(task: luigi.Task, seconds: float) -> None:
    """Luigi's PROCESSING_TIME event: one line per completed task, appended whole (O_APPEND) so that the
    workers of several processes and hosts can share one file."""
    end = time.time()
    line = {"task": task.task_id, "family": task.task_family, "start": end - seconds, "end": end,
            "host": socket.gethostname(), "pid": os.getpid()}
    fd = os.open(os.environ[TIMELINE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_timeline(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def loopback_scheduler(state_dir: Path, scheduler_config: str = ""):
    """A `luigid` on a free loopback port with its state and logs in `state_dir`, for tests and benchmarks;
    yields the port. `scheduler_config` is luigi.cfg text for it (e.g. a short worker_disconnect_delay)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = state_dir / "luigid.cfg"
    config.write_text(scheduler_config)
    (state_dir / "logs").mkdir(exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-c", "import luigi.cmdline; luigi.cmdline.luigid()", "--address", "127.0.0.1",
         "--port", str(port), "--state-path", str(state_dir / "state"), "--logdir", str(state_dir / "logs")],
        cwd=state_dir, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list", timeout=1) as reply:
                    reply.read()
                break
            except OSError as error:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("luigid did not start on loopback") from error
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(TIMELINE_ENV):
        luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)(record_task_time)
    # Several worker processes of one build on one host are the point here: Luigi's per-host pid lock would
    # refuse the second one.
    if "--no-lock" not in argv:
        argv.append("--no-lock")
    with luigi.cmdline_parser.CmdlineParser.global_instance(argv):
        retcodes = luigi.retcodes.retcode()
    result = luigi.interface.run(argv, worker_scheduler_factory=ClusterWorkerFactory(), detailed_summary=True)
    # Inside the command line's context: the tasks a root requires take their parameters from it (`--X-y`), and
    # completeness includes their identity.
    with luigi.cmdline_parser.CmdlineParser.global_instance(argv):
        complete = result.worker.roots_complete()
    sys.exit(0 if complete else (retcodes.task_failed or 1))


if __name__ == "__main__":
    main()
