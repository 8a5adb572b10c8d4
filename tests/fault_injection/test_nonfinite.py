"""Image features that overflow float16 or come out NaN are refused before their work shard is written."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import shards

IDS = ["p0", "p1", "p2"]


def vgg(value=None, row=1):
    grids = np.zeros((3, 49, 512), np.float32)
    if value is not None:
        grids[row, 7, 100] = value
    return {"vgg": grids}


def attributes(score):
    scores = np.full((3, 5), 0.5, np.float32)
    scores[2, 0] = score
    return {"attributes": ["a b c d e"] * 3, "attribute_scores": scores}


@pytest.mark.parametrize("group, columns, what", [
    ("vgg", vgg(70000.0), "beyond float16"),  # finite as float32, inf once stored as float16
    ("vgg", vgg(np.nan), "NaN"),
    ("vgg", vgg(-np.inf), "-inf"),
    ("attributes", attributes(np.inf), "an infinite score"),
])
def test_non_finite_features_fail_before_the_shard_is_written(tmp_path, group, columns, what):
    path = tmp_path / "shard-00000.h5"
    with pytest.raises(shards.NonFiniteFeatures, match=r"in 1 posts, e.g. p[12]; shard not written"):
        shards.write_feature_shard(path, group, IDS, columns, {})
    assert not path.exists(), what


def test_finite_features_and_nan_where_the_format_means_unknown_are_written(tmp_path):
    shards.write_feature_shard(tmp_path / "vgg.h5", "vgg", IDS, vgg(65504.0), {})  # float16's largest
    assert shards.read_shard(tmp_path / "vgg.h5", ["vgg"])["vgg"].max() == 65504
    shards.write_feature_shard(tmp_path / "attributes.h5", "attributes", IDS, attributes(np.nan), {})
    assert np.isnan(shards.read_shard(tmp_path / "attributes.h5", ["attribute_scores"])["attribute_scores"][2, 0])
