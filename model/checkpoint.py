"""Run files on disk: the model checkpoint and the training state a killed run resumes from, written atomically
and durably (`durable.atomic`).

Nothing is loaded with pickle: `torch.load(..., weights_only=True)` reads tensors and plain containers only, so
a file holding anything else (which could run code while it is unpickled) is refused before any of it runs.
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from durable.atomic import atomic_file
from model.config import ModelConfig
from model.data import Vocabularies
from model.model import KeyphraseModel

# 1: unversioned (agg_weight and the memory beside the state dict); 2: everything the model holds in its
# state dict. A newer format is refused: its meaning is unknown to this code.
CHECKPOINT_FORMAT = 2


def save(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A dict of tensors and plain values from `path`, refusing anything that would need pickle and any format
    newer than this code's."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):
            raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
        raise ValueError(f"{path}: refused: it holds objects that only pickle can rebuild, and unpickling can run "
                         f"code; a cmkp checkpoint holds tensors and plain values only") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a cmkp checkpoint (a {type(obj).__name__}, not a dict)")
    version = obj.get("format", 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {version!r} is newer than this code reads "
                         f"(1-{CHECKPOINT_FORMAT}); update cmkp to load it")
    return obj


def config_from_dict(fields: dict, source: str) -> ModelConfig:
    """A config saved by this or an older version: fields added since then take their defaults; fields this code
    does not know mean a newer version wrote it."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{source}: config fields {unknown} are unknown to this code (written by a newer cmkp?)")
    return ModelConfig(**fields)


def model_record(model: KeyphraseModel, config: ModelConfig | None = None) -> dict:
    """What rebuilds the model: its config (or `config`, the same model with chosen ranking weights), its
    vocabularies, and its state dict (which holds the aggregation weight and the keyphrase memory)."""
    return {"format": CHECKPOINT_FORMAT, "config": (config or model.config).to_dict(),
            "vocabs": model.vocabs.to_dict(), "vision_dim": model.vision_dim,
            "text_embedding_dim": model.text_embedding_dim, "state_dict": model.state_dict()}


def model_from_record(record: dict, source: str, device: torch.device | str = "cpu") -> KeyphraseModel:
    if record.get("format", 1) == 1:
        record = _from_format_1(record)
    model = KeyphraseModel(config_from_dict(record["config"], source), Vocabularies.from_dict(record["vocabs"]),
                           vision_dim=record["vision_dim"], text_embedding_dim=record.get("text_embedding_dim"))
    model.load_state_dict(record["state_dict"])
    return model.to(device)


def _from_format_1(record: dict) -> dict:
    state = dict(record["state_dict"], agg_weight=torch.tensor(float(record["agg_weight"]), dtype=torch.float64))
    memory = record.get("memory")
    if memory is not None:
        state.update({"memory.idf": memory["idf"], "memory.key_indices": memory["indices"],
                      "memory.key_values": memory["values"], "memory.labels": memory["labels"]})
    return dict(record, state_dict=state)


def save_checkpoint(model: KeyphraseModel, path: str | Path, extra: dict, config: ModelConfig | None = None) -> None:
    save({**model_record(model, config), **extra}, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> KeyphraseModel:
    """The model of a checkpoint written by `save_checkpoint`, in eval mode on `device`."""
    return model_from_record(load(path, device), str(path), device).eval()
