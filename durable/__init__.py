"""Durable, atomic file writes and the fault-injection hook that tests them: below the pipeline, the model and
the workflows alike, and importing nothing of theirs (nor luigi, nor torch)."""
