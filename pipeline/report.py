"""Per-stage bookkeeping: every record a stage reads is either kept or rejected with a reason.

Each stage owns one `StageLog`; it is saved next to the stage's kept records (`rejects.jsonl` lines
`{"id", "stage", "reason", "detail"}` and `counts.json`), and `BuildDataset` joins them into
`OUT/rejects.jsonl` and `OUT/report.json`, where `read == kept + sum(rejected.values())` holds per stage.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


class StageLog:
    """`unit`: what the stage reads and counts; "posts" everywhere except a CMKP release's own images, where
    each image is kept or rejected while its post goes on regardless (recorded in counts.json as "unit")."""

    def __init__(self, stage: str, unit: str = "posts"):
        self.stage = stage
        self.unit = unit
        self.read = 0
        self.kept = 0
        self.rejected: Counter[str] = Counter()
        self.rejects: list[dict] = []

    def keep(self) -> None:
        self.read += 1
        self.kept += 1

    def reject(self, record_id: str, reason: str, detail: str = "") -> None:
        self.read += 1
        self.rejected[reason] += 1
        self.rejects.append({"id": record_id, "stage": self.stage, "reason": reason, "detail": detail})

    def counts(self) -> dict:
        counts = {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items()))}
        if self.unit != "posts":
            counts["unit"] = self.unit
        check_counts(self.stage, counts)
        return counts

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        with open(directory / "rejects.jsonl", "w", encoding="utf-8") as f:
            for reject in self.rejects:
                f.write(json.dumps(reject, ensure_ascii=False) + "\n")
        (directory / "counts.json").write_text(json.dumps(self.counts(), indent=1) + "\n")


def check_counts(stage: str, counts: dict) -> None:
    """Raise if a stage's counts do not reconcile (a record was lost or counted twice)."""
    if counts["read"] != counts["kept"] + sum(counts["rejected"].values()):
        raise AssertionError(f"stage {stage!r}: counts do not reconcile: {counts}")


def load_counts(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "counts.json").read_text())


def iter_rejects(directory: str | Path):
    with open(Path(directory) / "rejects.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
