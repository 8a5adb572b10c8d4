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

A host can keep a kind of task off its workers: `[cluster_worker] decline = gpu` in that host's luigi.cfg (or
`--cluster-worker-decline gpu`) makes its workers decline every task holding a `gpu` resource, so that a
CPU-only host never takes a GPU stage, which the GPU hosts' workers run. Luigi's own scheduler cannot do this
(its resources are counted for the whole cluster, and an assistant takes any runnable task), so the scheduler
is `cmkp-scheduler`: luigid, with the same options, whose scheduler never gives a worker a task holding a
resource that worker declines. A declining worker that is given such a task anyway (by a plain luigid) stops
with an error saying so instead of running it. A declined kind of task waits for a worker that takes it: with
no such worker, the build waits.

With `CMKP_TASK_TIMELINE=FILE` in its environment, each worker appends a JSON line per task it completed
(task id, family, start, end, the CPU seconds of the task's run in the worker and the child processes it waited
for, host, pid) to FILE: the timeline that benchmarks/bench_scale.py reads.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import luigi
import luigi.cmdline
import luigi.interface
import luigi.retcodes
import luigi.scheduler
import luigi.server
import luigi.worker

from pipeline.project_files import CHECKOUT

TIMELINE_ENV = "CMKP_TASK_TIMELINE"
DECLINES = "declines"  # the worker information naming the resources whose tasks a worker declines


class cluster_worker(luigi.Config):
    """Settings of this host's cmkp-worker processes (luigi.cfg section [cluster_worker])."""

    decline = luigi.Parameter(default="", description="comma-separated resources (e.g. gpu) whose tasks this "
                              "host's workers never take (needs cmkp-scheduler)")


def resource_names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


class DeclinedTaskError(RuntimeError):
    """A worker was given a task holding a resource it declines: its scheduler does not honour declines."""


class ResourceDecliningScheduler(luigi.scheduler.Scheduler):
    """Luigi's scheduler, except that a worker is never given a task holding a resource it declines (the
    `declines` item of the information a worker registers with)."""

    _declined: frozenset[str] = frozenset()   # of the worker asking for work, during get_work

    def get_work(self, host=None, assistant=False, current_tasks=None, worker=None, **kwargs):
        if worker is not None:
            self._declined = resource_names(self._state.get_worker(worker).info.get(DECLINES, ""))
        try:
            return super().get_work(host=host, assistant=assistant, current_tasks=current_tasks, worker=worker,
                                    **kwargs)
        finally:
            self._declined = frozenset()

    def _schedulable(self, task):
        return super()._schedulable(task) and not any((task.resources or {}).get(name, 0) > 0
                                                      for name in self._declined)


def scheduler_main(argv: list[str] | None = None) -> None:
    """`cmkp-scheduler`: luigid (the same options) with ResourceDecliningScheduler."""
    luigi.server.Scheduler = ResourceDecliningScheduler  # the class luigid's server instantiates
    luigi.cmdline.luigid(sys.argv[1:] if argv is None else argv)


class ClusterWorker(luigi.worker.Worker):
    """A Luigi assistant worker that stays while the tasks it was given are incomplete and still being worked on,
    and never runs a task holding a resource this host declines."""

    def __init__(self, *args, **kwargs):
        kwargs["assistant"] = True
        super().__init__(*args, **kwargs)
        self.root_tasks: list[luigi.Task] = []
        self.declined = resource_names(cluster_worker().decline)
        if self.declined:
            self._worker_info.append((DECLINES, ",".join(sorted(self.declined))))

    def _run_task(self, task_id):
        held = self.declined & {name for name, amount in self._scheduled_tasks[task_id].process_resources().items()
                                if amount > 0}
        if held:
            raise DeclinedTaskError(
                f"this worker declines tasks holding {', '.join(sorted(held))} ([cluster_worker] decline) but was "
                f"given {task_id}: run the scheduler as cmkp-scheduler (a plain luigid ignores declines)")
        super()._run_task(task_id)

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


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and by the child processes it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_cpu_at_start: dict[str, float] = {}     # task id -> cpu_seconds() when its run started (Luigi's START event)


def record_task_start(task: luigi.Task) -> None:
    _cpu_at_start[task.task_id] = cpu_seconds()


def record_task_time(task: luigi.Task, seconds: float) -> None:
    """Luigi's PROCESSING_TIME event: one line per completed task, appended whole (O_APPEND) so that the
    workers of several processes and hosts can share one file. A worker runs its tasks in its own process
    (`--workers 1`), so the CPU seconds since START are the task's."""
    end = time.time()
    line = {"task": task.task_id, "family": task.task_family, "start": end - seconds, "end": end,
            "cpu": cpu_seconds() - _cpu_at_start.pop(task.task_id), "host": socket.gethostname(),
            "pid": os.getpid()}
    fd = os.open(os.environ[TIMELINE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_timeline(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def loopback_scheduler(state_dir: Path, scheduler_config: str = "", honour_declines: bool = True):
    """A `cmkp-scheduler` (or, `honour_declines` false, a plain `luigid`) on a free loopback port with its state
    and logs in `state_dir`, for tests and benchmarks; yields the port. `scheduler_config` is luigi.cfg text for
    it (e.g. a short worker_disconnect_delay)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = state_dir / "luigid.cfg"
    config.write_text(scheduler_config)
    (state_dir / "logs").mkdir(exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-c", "import pipeline.cluster; pipeline.cluster.scheduler_main()" if honour_declines
         else "import luigi.cmdline; luigi.cmdline.luigid()", "--address", "127.0.0.1",
         "--port", str(port), "--state-path", str(state_dir / "state"), "--logdir", str(state_dir / "logs")],
        cwd=state_dir, env={**os.environ, "LUIGI_CONFIG_PATH": str(config),
                            "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])},
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
        luigi.Task.event_handler(luigi.Event.START)(record_task_start)
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
