"""Writing and reading the HDF5 shards described in docs/FORMAT.md (the contract with `model/`).

This module is the one place that knows dataset names, dtypes and chunking. Writers are handed the
path to write (a Luigi `temporary_path`), so a killed run never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from pipeline import __version__
from durable.faults import kill_point

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")  # a dataset's splits (OUT/{split}/), in this order
STR = h5py.string_dtype(encoding="utf-8")

# Always present: one entry per post.
TEXT_COLUMNS: dict[str, Any] = {
    "post_id": STR,
    "text": STR,
    "tokens": STR,
    "keyphrases": STR,
    "hashtags": STR,
    "image_url": STR,
    "image_sha256": STR,
    "image_path": STR,
    "image_present": np.bool_,
    "image_size": np.int32,
}

# Feature groups: the datasets each group adds, with their dtypes.
FEATURE_COLUMNS: dict[str, dict[str, Any]] = {
    "ocr": {"ocr_raw": STR, "ocr_tokens": STR},
    "attributes": {"attributes": STR, "attribute_scores": np.float32},
    "vgg": {"vgg": np.float16},
    "butd": {
        "butd": np.float16,
        "butd_boxes": np.float32,
        "butd_num_boxes": np.int16,
        "butd_objects": np.int16,
        "butd_object_scores": np.float16,
        "butd_attributes": np.int16,
        "butd_attribute_scores": np.float16,
    },
    "text_embedding": {"text_embedding": np.float32},
}


# Float datasets where NaN is a value of the format (docs/FORMAT.md: attributes carried from a release have no
# scores, COCO detectors no attribute head); anywhere else it is a fault.
NAN_MEANS_UNKNOWN = {"attribute_scores", "butd_attribute_scores"}


class NonFiniteFeatures(ValueError):
    pass


def column_dtype(name: str):
    if name in TEXT_COLUMNS:
        return TEXT_COLUMNS[name]
    for columns in FEATURE_COLUMNS.values():
        if name in columns:
            return columns[name]
    raise KeyError(f"{name!r} is not a dataset of the shard format (docs/FORMAT.md)")


def _as_array(name: str, values) -> np.ndarray:
    dtype = column_dtype(name)
    if dtype is STR:
        return np.array([str(v) for v in values], dtype=object)
    return np.asarray(values, dtype=dtype)


def write_shard(path: str | Path, columns: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    """Write one shard. `columns` maps dataset names to per-post values (all of length N).

    `attrs` must hold at least `split`, `shard_index` and `source`; `features` is derived from the
    columns given; dict/list attribute values are stored as JSON.
    """
    missing = [c for c in TEXT_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"shard lacks required text datasets: {missing}")
    lengths = {name: len(v) for name, v in columns.items()}
    n = lengths["post_id"]
    if any(length != n for length in lengths.values()):
        raise ValueError(f"datasets differ in length: {lengths}")
    features = [g for g, cols in FEATURE_COLUMNS.items() if all(c in columns for c in cols)]
    partial = [g for g, cols in FEATURE_COLUMNS.items()
               if g not in features and any(c in columns for c in cols)]
    if partial:
        raise ValueError(f"feature groups given only in part: {partial}")
    with h5py.File(path, "w") as f:
        for name, values in columns.items():
            array = _as_array(name, values)
            # One sample per chunk: random access through the model's loader reads exactly one chunk.
            chunks = (1,) + array.shape[1:] if n and array.ndim > 1 else None
            # track_times=False: the same input must give byte-identical shards.
            f.create_dataset(name, data=array, dtype=column_dtype(name), chunks=chunks, track_times=False)
        kill_point("hdf5_write")  # the fault tests stop a write here, its file still open
        base = {
            "format_version": FORMAT_VERSION,
            "pipeline_version": __version__,
            "num_samples": n,
            "features": features,
            "random_weights": False,
        }
        for key, value in {**base, **attrs}.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def read_shard(path: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read whole datasets of a shard (strings decoded to str). For pipeline stages, not the model."""
    out = {}
    with h5py.File(path, "r") as f:
        for name in names or list(f.keys()):
            ds = f[name]
            out[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return out


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Shard attributes with JSON values decoded."""
    with h5py.File(path, "r") as f:
        attrs = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value.startswith(("[", "{")):
                value = json.loads(value)
            attrs[key] = value.item() if isinstance(value, np.generic) else value
    return attrs


# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> sha256, of the files this process hashed (sha256_file)
_HASHED: dict[tuple[int, int, int, int, int], str] = {}
_RACY_NS = 2_000_000_000   # a file changed this recently is hashed every time


def _identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read `block` bytes at a time (any size in bounded memory).

    A file this process hashed before and that is unchanged since is not read again, so that a check and the
    loader after it (a tagger's load checks each weights file, then builds from it) hash it once. Unchanged: the
    same device, inode, size, mtime and ctime, the last of which every write moves and no caller can set. As git
    does with its index, a file changed in the last seconds is hashed every time: the clock that stamps files
    ticks coarsely, so two writes within one tick would look alike."""
    with open(path, "rb") as f:
        before = _identity(os.fstat(f.fileno()))
        if before in _HASHED:
            return _HASHED[before]
        digest = hashlib.sha256()
        while chunk := f.read(block):
            digest.update(chunk)
        settled = before[4] < time.time_ns() - _RACY_NS
        if settled and _identity(os.fstat(f.fileno())) == before:   # not written to while it was read
            _HASHED[before] = digest.hexdigest()
    return digest.hexdigest()



def check_finite(name: str, array: np.ndarray, post_ids) -> None:
    """NonFiniteFeatures if a float dataset, as stored, holds inf or NaN (NaN allowed where the format gives it
    a meaning): an overflow of float16 or a NaN from a model must fail the shard, not reach training."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = np.isinf(array) if name in NAN_MEANS_UNKNOWN else ~np.isfinite(array)
    rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1)) if array.size else []
    if len(rows):
        examples = ", ".join(str(post_ids[i]) for i in rows[:5])
        raise NonFiniteFeatures(f"{name}: {int(bad.sum())} values are NaN or infinite as {array.dtype} (float16 "
                                f"holds at most 65504) in {len(rows)} posts, e.g. {examples}; shard not written")


def write_feature_shard(path: str | Path, group: str, post_ids, columns: Mapping[str, Any],
                        attrs: Mapping[str, Any]) -> None:
    """Write one feature group's work shard (`OUT/work/<group>/{split}/shard-NNNNN.h5`).

    It holds `post_id` (to check alignment with the text shard it was computed from), exactly the group's
    datasets, and the group's provenance attributes (`<group>_weights`, `<group>_meta`, ...; see the table
    above), which the assembled shard carries over. Non-finite features are refused before anything is
    written (`check_finite`).
    """
    expected = set(FEATURE_COLUMNS[group])
    if set(columns) != expected:
        raise ValueError(f"feature group {group!r} needs exactly {sorted(expected)}, got {sorted(columns)}")
    n = len(post_ids)
    if any(len(values) != n for values in columns.values()):
        raise ValueError(f"feature shard {group!r}: datasets differ in length from post_id ({n})")
    with np.errstate(over="ignore"):  # a value beyond float16's range becomes inf here, and is caught below
        arrays = {name: _as_array(name, values) for name, values in columns.items()}
    for name, array in arrays.items():
        check_finite(name, array, post_ids)
    with h5py.File(path, "w") as f:
        f.create_dataset("post_id", data=_as_array("post_id", post_ids), dtype=STR, track_times=False)
        for name, array in arrays.items():
            chunks = (1,) + array.shape[1:] if n and array.ndim > 1 else None
            f.create_dataset(name, data=array, dtype=column_dtype(name), chunks=chunks, track_times=False)
        kill_point("hdf5_write")
        f.attrs["feature_group"] = group
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
