"""Loading pretrained weights offline: a local file, the torch cache, or seeded random weights.

Nothing here downloads. A weights spec is one of:
  * `random` or `random:SEED`  -> the architecture with seeded random init, stamped `random(seed=N)`;
  * a torchvision weights enum entry (`IMAGENET1K_V1` or `VGG16_Weights.IMAGENET1K_V1`) -> the file that
    torchvision would download, looked up in the torch cache (`torch.hub.get_dir()/checkpoints/`);
  * a path to a local file (a state dict saved with `torch.save`).
A missing file raises `WeightsNotFoundError` naming the file, where it was expected and how to obtain it.

Every loader returns a `WeightsInfo`, the provenance stored in shard attributes as `<group>_weights`,
`<group>_weights_sha256` and `<group>_meta` (docs/FORMAT.md). torch is imported inside functions so that
importing this module (e.g. from a Luigi task module) never initialises torch or CUDA.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.shards import sha256_file

_RANDOM = re.compile(r"^random(?::(\d+))?$")


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file is not on this machine (this project never downloads at run time)."""


class WeightsNotTrustedError(ValueError):
    """A weights file is not the one the configuration names by its sha256 (or a pickle names none)."""


def check_sha256(actual: str, expected: str, what: str) -> None:
    """Refuse weights whose sha256 is not the one the configuration gives (when it gives one)."""
    if expected and actual != expected.strip().lower():
        raise WeightsNotTrustedError(f"{what} has sha256 {actual}, not the configured {expected}: refusing to load it")


@dataclass(frozen=True)
class WeightsInfo:
    name: str                  # enum entry name, local file path, or `random(seed=N)`
    sha256: str                # of the weights file; empty for random weights
    random: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def attrs(self, group: str) -> dict[str, Any]:
        """Shard attributes for one feature group (docs/FORMAT.md, provenance)."""
        return {f"{group}_weights": self.name, f"{group}_weights_sha256": self.sha256,
                f"{group}_meta": json.dumps(self.meta, sort_keys=True, default=str)}


def random_seed(spec: str) -> int | None:
    """The seed of a `random[:SEED]` spec (default 0), or None if the spec names real weights."""
    match = _RANDOM.match(spec.strip())
    if not match:
        return None
    return int(match.group(1) or 0)


def require_file(path: str | Path, component: str, how_to_obtain: str) -> Path:
    """Return `path` if it is a file, else raise the project's one clear missing-weights error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{component}: weights file {path.name!r} not found; expected at {path.resolve()}. "
            f"{how_to_obtain} (this pipeline never downloads weights; use weights=random for a test run)")
    return path


def cache_checkpoint_path(url: str) -> Path:
    """Where torchvision's weights API keeps the file downloaded from `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_weights(enum_class, spec: str):
    """The enum entry a spec names (`IMAGENET1K_V1`, `VGG16_Weights.IMAGENET1K_V1`, `DEFAULT`), or None."""
    entry = spec.split(".")[-1]
    prefix = spec.rsplit(".", 1)[0] if "." in spec else enum_class.__name__
    if prefix != enum_class.__name__ or not hasattr(enum_class, entry):
        return None
    return getattr(enum_class, entry)


def weights_meta(weights) -> dict[str, Any]:
    """JSON-friendly metadata of a torchvision weights entry (the category list is summarised by its length)."""
    meta = {k: v for k, v in weights.meta.items() if k != "categories"}
    if "categories" in weights.meta:
        meta["num_categories"] = len(weights.meta["categories"])
    meta["transforms"] = repr(weights.transforms())
    return meta


def load_state_dict(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints of this project wrap the state dict with their own metadata.
    return state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state


def build_loaded(build: Callable[[], Any], state: dict):
    """The module `build()` makes, holding `state`'s tensors, without the random initialisation that loading
    would overwrite (seconds for a VGG-16): built on the meta device, then handed the tensors. A module that
    makes tensors of its own outside its state dict (a detector's anchors, a non-persistent buffer) is built the
    ordinary way."""
    import torch

    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, assign=True)
    if not _meta_tensors(model):
        return model
    model = build()
    model.load_state_dict(state)
    return model


def _meta_tensors(model) -> list[str]:
    """Names of the tensors a module still holds on the meta device: parameters, buffers and tensor attributes."""
    import torch

    found = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) and v.is_meta for v in values):
                found.append(f"{prefix}.{attr}" if prefix else attr)
    return found


def weights_file(enum_class, spec: str, component: str, place: str | Path | None = None) -> Path:
    """The file a (non-random) weights spec names: an enum entry's file in the torch cache, or a local path; or,
    where the caller has placed that file elsewhere, `place`. Raises `WeightsNotFoundError` where it is missing."""
    entry = torchvision_weights(enum_class, spec)
    if place is not None:
        return require_file(place, component, f"It was given as the place of {entry or spec}.")
    if entry is not None:
        return require_file(
            cache_checkpoint_path(entry.url), component,
            f"Obtain it from {entry.url} (what torchvision's {entry} downloads) and place it in the torch "
            f"cache directory shown, or pass the file's path as the weights parameter.")
    return require_file(spec, component, f"Pass a state-dict file saved with torch.save, a {enum_class.__name__} "
                                         f"entry name found in the torch cache, or random.")


def spec_of(name: str) -> str:
    """The weights spec that loads what a recorded `<group>_weights` name describes (`random(seed=N)` ->
    `random:N`; enum entry names and file paths are specs already)."""
    match = re.match(r"^random\(seed=(\d+)\)$", name)
    return f"random:{match.group(1)}" if match else name


def load_torchvision_model(builder: Callable[..., Any], enum_class, spec: str, component: str,
                           place: str | Path | None = None, **builder_kwargs):
    """Build a torchvision model and load the weights a spec names. Returns (model, WeightsInfo).

    `builder` is e.g. `torchvision.models.vgg16`; `enum_class` its weights enum (for the cache file name, the
    metadata and, with random weights, the reference metadata of the architecture's default weights). `place`:
    where the spec's file lies instead (a copy outside the torch cache, a moved local file); the provenance
    still names the spec (the caller checks the file's sha256).
    """
    import torch

    seed = random_seed(spec)
    if seed is not None:
        torch.manual_seed(seed)
        model = builder(weights=None, **builder_kwargs)
        meta = {"architecture": builder.__name__, "reference_weights": str(enum_class.DEFAULT),
                "transforms": repr(enum_class.DEFAULT.transforms())}
        return model.eval(), WeightsInfo(f"random(seed={seed})", "", True, meta)

    path = weights_file(enum_class, spec, component, place)
    entry = torchvision_weights(enum_class, spec)
    if entry is not None:
        name, meta = str(entry), weights_meta(entry)
    else:
        name, meta = str(Path(spec).expanduser().resolve()), {}
    model = build_loaded(lambda: builder(weights=None, **builder_kwargs), load_state_dict(path))
    meta = {"architecture": builder.__name__, **meta}
    return model.eval(), WeightsInfo(name, sha256_file(path), False, meta)


def pick_device(requested: str = "auto"):
    """`auto` -> CUDA when available, else CPU."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
