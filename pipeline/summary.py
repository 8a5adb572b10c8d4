"""`python -m pipeline.summary DATASET_DIR [RUN_DIR]`: the closing summary of `make demo`.

Reads only what the pipeline and `cmkp-train` wrote (report.json, the split manifests, the shards' provenance,
metrics.json) and prints the counts per stage (read = kept + rejected, by reason), the shards per split with
their feature groups, the precision the image models ran in, and the trained model's scores. `demo_summary`
adds the demo's tagged new posts and its timings (pipeline.demo).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.shards import SPLITS, read_attrs


def dataset_lines(dataset: Path) -> list[str]:
    report = json.loads((dataset / "report.json").read_text())
    lines = [f"dataset {dataset} (source: {report['source']})", "  stage        read    kept  rejected"]
    for stage, counts in report["stages"].items():
        rejected = ", ".join(f"{reason} {n}" for reason, n in counts["rejected"].items()) or "-"
        lines.append(f"  {stage:<10} {counts['read']:>6} {counts['kept']:>7}  {rejected}")
    for split in SPLITS:
        manifest_path = dataset / split / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        groups = sorted({g for shard in manifest["shards"] for g in shard["features"]})
        lines.append(f"  {split:<6} {manifest['posts']:>5} posts in {len(manifest['shards'])} shard(s), "
                     f"{manifest['with_image']} with image, {manifest['with_ocr']} with OCR; "
                     f"features: {', '.join(groups) or 'text only'}")
    return lines


def precision_lines(dataset: Path) -> list[str]:
    """The precision each image model ran in, from the provenance of the first shard that has them."""
    for split in SPLITS:
        manifest_path = dataset / split / "manifest.json"
        shards_listed = json.loads(manifest_path.read_text())["shards"] if manifest_path.exists() else []
        if shards_listed:
            attrs = read_attrs(dataset / split / shards_listed[0]["file"])
            break
    else:
        return []
    metas = {group: attrs.get(f"{group}_meta") for group in ("vgg", "butd", "attributes")}
    chosen = {group: meta for group, meta in metas.items() if isinstance(meta, dict) and "precision" in meta}
    if not chosen:
        return []
    reasons = sorted({f"{meta['precision_requested']}: {meta['precision_reason']}" for meta in chosen.values()})
    return ["  image models ran in " + ", ".join(f"{group} {meta['precision']}" for group, meta in chosen.items())
            + f" ({'; '.join(reasons)})"]


def timing_lines(timings: Path, total_seconds: float, top_tasks: int = 8) -> list[str]:
    """Wall and CPU seconds per demo step and, inside the pipeline, per Luigi task family (pipeline.demo)."""
    entries = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    families: dict[str, list[float]] = {}
    for entry in entries:
        if "task" in entry:
            runs = families.setdefault(entry["task"], [0, 0.0, 0.0])
            runs[0] += 1
            runs[1] += entry["wall_s"]
            runs[2] += entry["cpu_s"]
    lines = [f"timing (wall / CPU seconds; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} now)"]
    for entry in entries:
        if "task" in entry:
            continue
        lines.append(f"  {entry['step']:<28} {entry['wall_s']:7.1f} {entry['cpu_s']:8.1f}")
        if entry["step"] == "pipeline":
            ranked = sorted(families.items(), key=lambda kv: -kv[1][2])
            for family, (count, wall, cpu) in ranked[:top_tasks]:
                lines.append(f"    {family + (f' x{count}' if count > 1 else ''):<26} {wall:7.1f} {cpu:8.1f}")
            if ranked[top_tasks:]:
                rest = ranked[top_tasks:]
                lines.append(f"    {f'{len(rest)} other task families':<26} {sum(r[1][1] for r in rest):7.1f} "
                             f"{sum(r[1][2] for r in rest):8.1f}")
    lines.append(f"  {'total':<28} {total_seconds:7.1f}")
    return lines


def run_lines(run: Path) -> list[str]:
    metrics = json.loads((run / "metrics.json").read_text())
    lines = [f"model run {run}"]
    for split, scores in metrics.items():
        if isinstance(scores, dict) and "f1@1" in scores:
            lines.append(f"  {split:<6} F1@1 {scores['f1@1']:6.2f}  F1@3 {scores['f1@3']:6.2f}  "
                         f"MAP@5 {scores['map@5']:6.2f}")
    return lines


def tag_lines(tags: Path, corpus: Path, width: int = 100) -> list[str]:
    """The tagged new posts: each post's text, its modalities and top keyphrases, and the keyphrase the sample
    generator wrote it about (expected.json's new_posts)."""
    about = json.loads((corpus / "expected.json").read_text(encoding="utf-8"))["new_posts"]
    lines = [f"new posts tagged ({tags}; in brackets: what the sample generator wrote each one about)"]
    for line in tags.read_text(encoding="utf-8").splitlines():
        result = json.loads(line)
        post = about.get(result["id"], {})
        text = post.get("text", "")
        lines.append(f"  {result['id']} \"{text if len(text) <= width else text[:width - 3] + '...'}\"")
        if "rejected" in result:
            lines.append(f"      rejected: {result['rejected']} ({result.get('detail', '')})")
            continue
        keyphrases = ", ".join(f"{k['text']} {k['score']:.2f}" for k in result["keyphrases"])
        lines.append(f"      {'+'.join(result['modalities'])} -> {keyphrases or '(none)'}"
                     f"  [{post.get('keyphrase', '?')}]")
    return lines


def demo_summary(config, log_path: Path, total_seconds: float) -> str:
    """The summary `make demo` ends with (config: a pipeline.demo.DemoConfig)."""
    lines = ["", "== summary =="] + dataset_lines(config.dataset) + precision_lines(config.dataset)
    lines += run_lines(config.run) + tag_lines(config.tags, config.corpus)
    lines += timing_lines(config.timings, total_seconds)
    lines.append(f"full log: {log_path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        sys.exit("usage: python -m pipeline.summary DATASET_DIR [RUN_DIR]")
    lines = dataset_lines(Path(args[0])) + precision_lines(Path(args[0]))
    if len(args) == 2:
        lines += run_lines(Path(args[1]))
    print("\n".join(["", "== summary =="] + lines))


if __name__ == "__main__":
    main()
