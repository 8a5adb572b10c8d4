"""Luigi workflows that run experiment suites (seeds, ablations, tables) on built datasets."""
