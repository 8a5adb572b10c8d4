"""Tasks that fail in the ways Luigi tells apart, for the exit-code tests (`luigi --module failing_tasks`): tasks of
the project, so that its luigi.cfg applies to them as to every task of `pipeline` and `workflows`."""
from __future__ import annotations

import luigi

import pipeline  # noqa: F401  (the project's luigi.cfg, read on import)


class RequiresRaises(luigi.Task):
    """Its dependencies cannot even be worked out: a scheduling error."""

    def requires(self):
        raise RuntimeError("requires() failed")

    def output(self):
        return luigi.LocalTarget("/nonexistent/never")


class DependsOnAFailure(luigi.WrapperTask):
    """Cannot run because what it depends on fails."""

    def requires(self):
        return RequiresRaises()
