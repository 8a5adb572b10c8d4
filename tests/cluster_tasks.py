"""Tasks for the cluster tests (`--module cluster_tasks`): GPU and CPU jobs that record which worker ran them."""
from __future__ import annotations

import os
import time

import luigi

import pipeline  # noqa: F401  (the project's luigi.cfg, read on import)

WORKER_NAME_ENV = "CLUSTER_TEST_WORKER"


class Job(luigi.Task):
    directory = luigi.Parameter()
    index = luigi.IntParameter()
    kind = luigi.ChoiceParameter(choices=("gpu", "cpu"))

    @property
    def resources(self):
        return {"gpu": 1} if self.kind == "gpu" else {}

    def output(self):
        return luigi.LocalTarget(os.path.join(self.directory, f"{self.kind}-{self.index}"))

    def run(self):
        time.sleep(0.3)  # long enough for every worker to ask for work meanwhile
        with self.output().open("w") as f:
            f.write(os.environ[WORKER_NAME_ENV])


class Jobs(luigi.Task):
    """`n` jobs of each kind, found only once this task runs (dynamic dependencies, as a dataset's shards are)."""

    directory = luigi.Parameter()
    n = luigi.IntParameter(default=4)

    def run(self):
        yield [Job(directory=self.directory, index=i, kind=kind) for kind in ("gpu", "cpu") for i in range(self.n)]

    def complete(self):
        return all(Job(directory=self.directory, index=i, kind=kind).complete()
                   for kind in ("gpu", "cpu") for i in range(self.n))
