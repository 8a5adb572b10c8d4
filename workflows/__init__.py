"""Luigi workflows that run experiment suites (seeds, ablations, tables) on built datasets."""

import pipeline  # noqa: F401  (the project's luigi.cfg, read on import wherever `luigi --module workflows...` runs)
