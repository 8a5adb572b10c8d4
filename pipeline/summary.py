"""`python -m pipeline.summary DATASET_DIR [RUN_DIR]`: the closing summary of `make demo`.

Reads only what the pipeline and `cmkp-train` wrote (report.json, the split manifests, metrics.json) and
prints the counts per stage (read = kept + rejected, by reason), the shards per split with their feature
groups, and the trained model's scores.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def dataset_lines(dataset: Path) -> list[str]:
    report = json.loads((dataset / "report.json").read_text())
    lines = [f"dataset {dataset} (source: {report['source']})", "  stage        read    kept  rejected"]
    for stage, counts in report["stages"].items():
        rejected = ", ".join(f"{reason} {n}" for reason, n in counts["rejected"].items()) or "-"
        lines.append(f"  {stage:<10} {counts['read']:>6} {counts['kept']:>7}  {rejected}")
    for split in ("train", "valid", "test"):
        manifest_path = dataset / split / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        groups = sorted({g for shard in manifest["shards"] for g in shard["features"]})
        lines.append(f"  {split:<6} {manifest['posts']:>5} posts in {len(manifest['shards'])} shard(s), "
                     f"{manifest['with_image']} with image, {manifest['with_ocr']} with OCR; "
                     f"features: {', '.join(groups) or 'text only'}")
    return lines


def run_lines(run: Path) -> list[str]:
    metrics = json.loads((run / "metrics.json").read_text())
    lines = [f"model run {run}"]
    for split, scores in metrics.items():
        if isinstance(scores, dict) and "f1@1" in scores:
            lines.append(f"  {split:<6} F1@1 {scores['f1@1']:6.2f}  F1@3 {scores['f1@3']:6.2f}  "
                         f"MAP@5 {scores['map@5']:6.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        sys.exit("usage: python -m pipeline.summary DATASET_DIR [RUN_DIR]")
    lines = dataset_lines(Path(args[0]))
    if len(args) == 2:
        lines += run_lines(Path(args[1]))
    print("\n".join(["", "== summary =="] + lines))


if __name__ == "__main__":
    main()
