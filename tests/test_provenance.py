"""A run is tied to one featurisation: the training shards' provenance of a group must agree, except for what
only describes one shard's content."""
import json

import h5py
import pytest

from model.provenance import FeaturisationError, shard_group_provenance


def shard(path, meta, sha="ab" * 32):
    with h5py.File(path, "w") as f:
        f.attrs["ocr_weights"] = "tesseract eng"
        f.attrs["ocr_weights_sha256"] = sha
        f.attrs["ocr_meta"] = json.dumps(meta)
    return path


def test_per_shard_counts_do_not_split_a_featurisation_but_other_settings_do(tmp_path):
    a = shard(tmp_path / "a.h5", {"light_threshold": 200, "counts": {"images": 300}})
    b = shard(tmp_path / "b.h5", {"light_threshold": 200, "counts": {"images": 266}})
    entry = shard_group_provenance([a, b], "ocr")
    assert entry["meta"] == {"light_threshold": 200} and entry["weights_sha256"] == "ab" * 32
    c = shard(tmp_path / "c.h5", {"light_threshold": 180, "counts": {"images": 300}})
    with pytest.raises(FeaturisationError, match="come from different weights or settings"):
        shard_group_provenance([a, c], "ocr")
    d = shard(tmp_path / "d.h5", {"light_threshold": 200}, sha="cd" * 32)
    with pytest.raises(FeaturisationError):
        shard_group_provenance([a, d], "ocr")
