"""The manifests of a dataset directory (docs/FORMAT.md), through which alone the model reads a dataset.

`OUT/{split}/manifest.json` lists a split's shards in order with their sample counts and sha256;
`OUT/manifest.json`, written last, lists every file of the dataset with its sha256 (the split manifests
included) and the counts per split.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import __version__, shards


def split_manifest(split: str, source: str, shard_paths: list[Path], progress=lambda done, total: None) -> dict:
    entries, posts, with_image, with_ocr = [], 0, 0, 0
    for i, path in enumerate(shard_paths):
        data = shards.read_shard(path, ["image_present"])
        attrs = shards.read_attrs(path)
        posts += int(attrs["num_samples"])
        with_image += int(data["image_present"].sum())
        if "ocr" in attrs["features"]:
            with_ocr += sum(1 for t in shards.read_shard(path, ["ocr_tokens"])["ocr_tokens"] if t)
        entries.append({"file": Path(path).name, "num_samples": int(attrs["num_samples"]),
                        "sha256": shards.sha256_file(path), "features": attrs["features"]})
        progress(i + 1, len(shard_paths))
    return {"format_version": shards.FORMAT_VERSION, "split": split, "source": source,
            "posts": posts, "with_image": with_image, "with_ocr": with_ocr, "shards": entries}


def dataset_manifest(root: Path, split_manifests: dict[str, Path], other_files: list[str], **about) -> dict:
    """The dataset manifest of `root`: `other_files` (relative names) and each split's manifest and shards
    listed with their sha256; `about` holds source, input, features and parameters."""
    files = [{"file": name, "sha256": shards.sha256_file(Path(root, name))} for name in other_files]
    split_counts = {}
    for split, path in split_manifests.items():
        manifest = json.loads(Path(path).read_text())
        split_counts[split] = {k: manifest[k] for k in ("posts", "with_image", "with_ocr")}
        files.append({"file": f"{split}/manifest.json", "sha256": shards.sha256_file(path)})
        files.extend({"file": f"{split}/{e['file']}", "sha256": e["sha256"], "num_samples": e["num_samples"]}
                     for e in manifest["shards"])
    return {"format_version": shards.FORMAT_VERSION, "pipeline_version": __version__, **about,
            "splits": split_counts, "files": files}
