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
"""
from __future__ import annotations

import sys

import luigi
import luigi.interface
import luigi.retcodes
import luigi.worker


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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Several worker processes of one build on one host are the point here: Luigi's per-host pid lock would
    # refuse the second one.
    if "--no-lock" not in argv:
        argv.append("--no-lock")
    with luigi.cmdline_parser.CmdlineParser.global_instance(argv):
        retcodes = luigi.retcodes.retcode()
    result = luigi.interface.run(argv, worker_scheduler_factory=ClusterWorkerFactory(), detailed_summary=True)
    sys.exit(0 if result.worker.roots_complete() else (retcodes.task_failed or 1))


if __name__ == "__main__":
    main()
