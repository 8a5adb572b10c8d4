"""The Luigi target every task of the pipeline and the workflows writes through."""
from __future__ import annotations

import luigi

from durable.atomic import atomic_path


class DurableTarget(luigi.LocalTarget):
    """A LocalTarget whose `temporary_path()` is `atomic_path`: durable before the rename, unique across hosts."""

    def temporary_path(self):
        return atomic_path(self.path)
