"""What a run directory must carry so that new posts are featurised exactly as its training posts were.

`cmkp-train` writes `RUN/featurisation.json` (through `write_featurisation`, called once at the start of
training) and copies the small files it names into `RUN/featurisation/`:

    dataset            where the shards came from: source, manifest sha256, pipeline version
    text               the tokenizer's settings: the hashtag segmenter's corpus texts (copied), its extra
                       statistics / learned-mapping files and the manual mapping list (path + sha256), and the
                       training filters' parameters (for `--filters train`)
    image_checks       max_bytes, max_pixels, require_jpeg of the image stage
    groups             per feature group the model reads (ocr, attributes, vgg or butd, text_embedding) and the
                       training shards hold: the shards' provenance attributes (`<group>_weights`,
                       `_weights_sha256`, `_meta`) and whether they came from seeded random weights;
                       text_embedding also says whether its encoder read the OCR tokens after the post's
                       (`appends_ocr`; OCR is then computed for new posts even where the model itself does not
                       read it)
    files              every copied file with its sha256 (the OCR cleaning vocabulary, the segmenter corpus)

`check_featurisation` verifies all of it before any post is read: the copied files against their checksums,
each weights file (an enum entry's file in the torch cache, a local file, the attribute predictor, Tesseract's
language data, the sentence encoder's safetensors) against the sha256 the shards recorded. Every problem is collected into one
`FeaturisationError` naming what differs and where it is expected. Seeded random weights need no file: the
same seed rebuilds the same weights.

A run directory is relocatable: what it carries (the checkpoint, `featurisation/`) is read relative to it, wherever
it lies. What it points to outside itself (`LOCATABLE`: the VGG-16 and detector weights, the attribute predictor,
the sentence encoder's directory, Tesseract's language data; the segmenter's extra files) is found at its recorded
path (a torchvision weights entry: in the torch cache) or, where that is gone, where the caller's `locate` places
it, and checked by the same sha256 either way.

A feature group plugs in by having an entry in `GROUP_FILES` (how to find its weights file from its recorded
provenance) and a builder in `model.tagging`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from durable.atomic import atomic_file

FEATURISATION = "featurisation.json"
FILES_DIR = "featurisation"
VERSION = 1
# Carried by a CMKP release rather than computed (pipeline.text_tasks.ReleaseFeatureShard).
CARRIED = "cmkp-release"
TEXT_EMBEDDING = "text_embedding"


class FeaturisationError(ValueError):
    """The run directory cannot featurise new posts as its training posts were (what differs, and where)."""


def model_groups(config) -> list[str]:
    """Feature groups a model configuration reads, in shard format order."""
    groups = []
    if config.image_wordings:
        groups.append("ocr")
    if config.use_attributes:
        groups.append("attributes")
    if config.vision != "none":
        groups.append(config.vision)
    if config.uses_text_embedding:
        groups.append(TEXT_EMBEDDING)
    return groups


def _sha256(path: Path) -> str:
    from pipeline.shards import sha256_file
    return sha256_file(path)


def _json_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(("{", "[")):
        return json.loads(value)
    return value.item() if hasattr(value, "item") else value


# keys of a group's `<group>_meta` that describe one shard's content
SHARD_CONTENT = ("counts", "ocr_timeout_posts")


def shard_group_provenance(paths: list[Path], group: str) -> dict:
    """The provenance attributes of one group, identical across the given shards (else a clear error)."""
    found = None
    for path in paths:
        with h5py.File(path, "r") as f:
            entry = {"weights": _json_attr(f.attrs.get(f"{group}_weights", "")),
                     "weights_sha256": _json_attr(f.attrs.get(f"{group}_weights_sha256", "")),
                     "meta": _json_attr(f.attrs.get(f"{group}_meta", "{}"))}
        if isinstance(entry["meta"], dict):
            # what one shard's content was (e.g. OCR's image counts), not how it was featurised
            entry["meta"] = {k: v for k, v in entry["meta"].items() if k not in SHARD_CONTENT}
        # The shards' random_weights flag covers all groups; a group's own: its weights (or the attribute
        # predictor's backbone) were seeded random.
        backbone = entry["meta"].get("backbone_weights", "") if isinstance(entry["meta"], dict) else ""
        entry["random_weights"] = str(entry["weights"]).startswith("random(") or str(backbone).startswith("random(")
        if found is None:
            found = entry
        elif entry != found:
            raise FeaturisationError(f"the {group!r} features of {paths[0]} and {path} come from different "
                                     f"weights or settings; a model cannot be tied to one featurisation")
    return found


def _chain_parameters(data_dir: Path) -> dict:
    manifest = data_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("parameters", {}) if manifest.is_file() else {}


def _task_parameters(parameters: dict, family: str) -> dict:
    entry = parameters.get(family, {})
    return entry[0] if isinstance(entry, list) else entry


def _listed(value) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[") else [value] if value else []
    return [str(v) for v in value or []]


def _file_entry(path: str | Path) -> dict:
    path = Path(path).resolve()
    return {"path": str(path), "sha256": _sha256(path) if path.is_file() else ""}


def write_featurisation(data_dir: str | Path, run_dir: str | Path, config, train_shards: list[Path]) -> dict:
    """Record in `run_dir` how the training split was featurised (see the module docstring)."""
    from pipeline import __version__ as pipeline_version
    from pipeline.segment import default_mapping_file
    from pipeline.text_tasks import read_jsonl

    data_dir, run_dir = Path(data_dir), Path(run_dir)
    files_dir = run_dir / FILES_DIR
    files_dir.mkdir(parents=True, exist_ok=True)
    manifest = data_dir / "manifest.json"
    source = json.loads(manifest.read_text())["source"] if manifest.is_file() else ""
    parameters = _chain_parameters(data_dir)
    files: dict[str, dict] = {}

    def copy(name: str, src: Path) -> None:
        shutil.copyfile(src, files_dir / name)
        files[name] = {"sha256": _sha256(files_dir / name), "copied_from": str(src.resolve())}

    ocr_vocabulary = data_dir / "work" / "ocr" / "vocabulary.json"
    if ocr_vocabulary.is_file():
        copy("ocr_vocabulary.json", ocr_vocabulary)
    # The segmenter mixes the training corpus's own words into its statistics (TokenizePosts): the texts it read.
    segmenter_input = data_dir / "work" / "dedupe" / "posts.jsonl"
    if segmenter_input.is_file():
        texts = [r["text"] for r in read_jsonl(segmenter_input)]
        (files_dir / "segmenter_corpus.json").write_text(json.dumps({"texts": texts}, ensure_ascii=False) + "\n")
        files["segmenter_corpus.json"] = {"sha256": _sha256(files_dir / "segmenter_corpus.json"),
                                          "copied_from": str(segmenter_input.resolve())}
    tokenize = _task_parameters(parameters, "TokenizePosts")
    filters = _task_parameters(parameters, "FilterPosts")
    checks = _task_parameters(parameters, "ReleaseImages" if source == "cmkp" else "FetchImages")
    shard_features = set()
    for path in train_shards:
        with h5py.File(path, "r") as f:
            groups = set(json.loads(f.attrs.get("features", "[]")))
        shard_features = groups if not shard_features else shard_features & groups
    groups = {g: shard_group_provenance(train_shards, g) for g in model_groups(config) if g in shard_features}
    if TEXT_EMBEDDING in groups:
        # EmbedPosts reads the post's tokens, then its OCR tokens where the shards hold OCR (and it was asked to)
        embed = _task_parameters(parameters, "EmbedPosts")
        appends_ocr = "ocr" in shard_features and str(embed.get("text_embedding_ocr", True)).lower() == "true"
        groups[TEXT_EMBEDDING]["appends_ocr"] = appends_ocr
        if appends_ocr and "ocr" not in groups:
            groups = {"ocr": shard_group_provenance(train_shards, "ocr"), **groups}
    record = {
        "version": VERSION,
        "dataset": {"path": str(data_dir.resolve()), "source": source, "pipeline_version": pipeline_version,
                    "manifest_sha256": _sha256(manifest) if manifest.is_file() else ""},
        "text": {"tokenized_by": "cmkp-release" if source == "cmkp" else "pipeline.text.PostTokenizer",
                 "segmenter_corpus": "segmenter_corpus.json" if "segmenter_corpus.json" in files else None,
                 "segmenter_stats_from": [_file_entry(p) for p in _listed(tokenize.get("segmenter_stats_from"))],
                 "segmenter_learn_from": [_file_entry(p) for p in _listed(tokenize.get("segmenter_learn_from"))],
                 "segmenter_mappings": [_file_entry(default_mapping_file())],
                 "min_tokens": int(tokenize.get("min_tokens", 4)),
                 "max_hashtags": int(filters.get("max_hashtags", 5)), "language": filters.get("language", "en")},
        "image_checks": {"max_bytes": int(checks.get("max_bytes", 20 * 1024 * 1024)),
                         "max_pixels": int(checks.get("max_pixels", 89_478_485)),
                         "require_jpeg": str(checks.get("require_jpeg", True)).lower() == "true"},
        "ocr_vocabulary": "ocr_vocabulary.json" if "ocr_vocabulary.json" in files else None,
        "groups": groups,
        "random_weights": any(g["random_weights"] for g in groups.values()),
        "files": files,
    }
    with atomic_file(run_dir / FEATURISATION, "w") as f:
        f.write(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


# ---- checking -------------------------------------------------------------------------------------------

def _vgg_file(entry: dict, place: Path | None = None) -> Path:
    import torchvision

    from pipeline.weights import spec_of, weights_file
    return weights_file(torchvision.models.VGG16_Weights, spec_of(entry["weights"]), "VGG-16 (vgg features)", place)


def _butd_file(entry: dict, place: Path | None = None) -> Path:
    from pipeline.weights import require_file, spec_of, weights_file

    meta = entry["meta"]
    if meta.get("backend") == "torchvision":
        import torchvision.models.detection as detection

        from pipeline.butd.torchvision_backend import DETECTORS
        enum = getattr(detection, DETECTORS[meta["detector"]])
        return weights_file(enum, spec_of(entry["weights"]), f"BUTD torchvision backend ({meta['detector']})",
                            place)
    return require_file(place or entry["weights"], f"BUTD {meta.get('backend')} backend",
                        "Use the training run's file.")


def _attributes_file(entry: dict, place: Path | None = None) -> Path:
    from pipeline.weights import require_file
    return require_file(place or entry["weights"], "attribute predictor",
                        "It is the training dataset's OUT/work/attributes/predictor.pt (TrainAttributePredictor).")


def _ocr_file(entry: dict, place: Path | None = None) -> Path:
    from pipeline.weights import require_file
    tessdata = place or entry["meta"].get("tessdata", "")
    return require_file(Path(tessdata, "eng.traineddata"), "Tesseract (ocr features)",
                        "Install tesseract-ocr (the training run's language data).")


def _text_embedding_file(entry: dict, place: Path | None = None) -> Path:
    from pipeline.text_embedding import WEIGHTS_FILE, resolve_model
    from pipeline.weights import require_file

    name = entry["weights"]
    # a local directory is recorded by its absolute path; a Hub id is looked up in the caches and packages
    directory = place or (Path(name) if Path(name).is_absolute() else resolve_model(name)[0])
    return require_file(directory / WEIGHTS_FILE, f"sentence encoder {name} (text_embedding features)",
                        "It is the model the training shards' text_embedding group was computed with.")


# Group -> the weights file its recorded provenance names (None: seeded random weights, nothing to check).
GROUP_FILES = {"ocr": _ocr_file, "attributes": _attributes_file, "vgg": _vgg_file, "butd": _butd_file,
               TEXT_EMBEDDING: _text_embedding_file}
# What a run points to outside itself by path, and which `locate` may place elsewhere (checked as recorded):
# component -> what the given path is. A torchvision weights entry is otherwise looked up in the torch cache.
LOCATABLE = {"ocr": "Tesseract's tessdata directory (eng.traineddata)",
             "attributes": "the attribute predictor's file (the training dataset's work/attributes/predictor.pt)",
             "vgg": "VGG-16's weights file (the torch cache's file of the recorded entry, or the recorded local file)",
             "butd": "the detector's weights file (the torch cache's file of the recorded entry, or the recorded "
                     "local file)",
             TEXT_EMBEDDING: "the sentence encoder's directory (model.safetensors, its tokenizer and pooling)"}
SEGMENTER_FILES = ("segmenter_stats_from", "segmenter_learn_from")     # located as `segmenter:<file name>`


def segmenter_key(entry: dict) -> str:
    """The `locate` name of a hashtag segmenter file the run points to."""
    return f"segmenter:{Path(entry['path']).name}"


def _hint(component: str) -> str:
    what = LOCATABLE.get(component, "the file")
    return f"if it moved, give its place: locate {component}=PATH ({what}; checked by sha256)"


@dataclass
class Featurisation:
    """A checked `featurisation.json`: what to compute for new posts, and how."""
    run_dir: Path
    record: dict
    groups: dict[str, dict]                     # group -> recorded provenance, for the groups to compute
    carried: list[str] = field(default_factory=list)   # groups a CMKP release carried: absent for new posts
    located: dict[str, Path] = field(default_factory=dict)  # component -> where `locate` placed it (verified)

    @property
    def random_weights(self) -> bool:
        return bool(self.record["random_weights"])

    def file(self, name: str) -> Path:
        return self.run_dir / FILES_DIR / name

    def ocr_vocabulary(self) -> set[str]:
        return set(json.loads(self.file(self.record["ocr_vocabulary"]).read_text())["words"])

    def segmenter_texts(self) -> list[str]:
        name = self.record["text"]["segmenter_corpus"]
        return json.loads(self.file(name).read_text())["texts"] if name else []

    def segmenter_files(self, kind: str) -> list[str]:
        """The hashtag segmenter's statistics or learned-mapping files (`SEGMENTER_FILES`), where they are now."""
        return [str(self.located.get(segmenter_key(e), e["path"])) for e in self.record["text"].get(kind, [])]

    def place(self, group: str) -> str:
        """Where a group's weights load from: where `locate` put them, else as recorded (a file, a directory or
        a name the loader looks up)."""
        if group in self.located:
            return str(self.located[group])
        entry = self.groups[group]
        return entry["meta"].get("tessdata", "") if group == "ocr" else entry["weights"]


def check_same_featurisation(featurisations: list[Featurisation]) -> None:
    """Members of an ensemble featurise new posts one way: what their records say of the tokenizer, the image
    checks, each feature group and the copied files (not where those were copied from) must agree."""
    def identity(record: dict) -> dict:
        return {**{k: record.get(k) for k in ("text", "image_checks", "ocr_vocabulary", "groups", "random_weights")},
                "files": {name: entry["sha256"] for name, entry in record.get("files", {}).items()}}

    first = identity(featurisations[0].record)
    for other in featurisations[1:]:
        found = identity(other.record)
        differ = sorted(k for k in first if first[k] != found[k])
        if differ:
            first_path = featurisations[0].run_dir / FEATURISATION
            raise FeaturisationError(f"{other.run_dir / FEATURISATION} differs from {first_path} in {differ}: an "
                                     f"ensemble's members must featurise posts one way (seeds of one configuration "
                                     f"trained on one dataset)")


def check_featurisation(run_dir: str | Path, config, locate: dict[str, str | Path] | None = None) -> Featurisation:
    """The run's featurisation, verified; raises `FeaturisationError` listing every problem found.

    What the run carries (the checkpoint, `featurisation/`) is read relative to `run_dir`, wherever it was moved.
    What it points to outside itself is found where the record says, or where `locate` (component -> path; the
    components are `LOCATABLE`'s and `segmenter:<file name>`) places it, and either way checked by sha256."""
    run_dir = Path(run_dir)
    path = run_dir / FEATURISATION
    if not path.is_file():
        raise FeaturisationError(
            f"{path} is missing: the run directory does not say how its training posts were featurised "
            f"(tokenizer, OCR vocabulary, image weights), so new posts cannot be featurised the same way. "
            f"Retrain with this version of cmkp-train, which writes it.")
    record = json.loads(path.read_text())
    locate = {k: Path(v).expanduser().resolve() for k, v in (locate or {}).items()}
    located: dict[str, Path] = {}
    problems = []
    if record.get("version") != VERSION:
        problems.append(f"{path}: version {record.get('version')}, this tagger reads {VERSION}")
    for name, entry in record.get("files", {}).items():
        copied = run_dir / FILES_DIR / name
        if not copied.is_file():
            problems.append(f"{name}: missing, expected at {copied}")
        elif _sha256(copied) != entry["sha256"]:
            problems.append(f"{name}: sha256 {_sha256(copied)} at {copied} differs from the recorded "
                            f"{entry['sha256']}")
    from pipeline.segment import default_mapping_file
    for kind in SEGMENTER_FILES + ("segmenter_mappings",):
        for entry in record["text"].get(kind, []):
            # the manual mapping list is this installation's own copy (it moves with the checkout)
            key = segmenter_key(entry) if kind in SEGMENTER_FILES else None
            given = key in locate
            found = default_mapping_file() if key is None else locate[key] if given else Path(entry["path"])
            where = f" (given: locate {key}={found})" if given else ""
            if not found.is_file():
                hint = f"; {_hint(key)}" if key and not given else ""
                problems.append(f"hashtag segmenter ({kind}): {found} is missing{where}{hint}")
            elif _sha256(found) != entry["sha256"]:
                problems.append(f"hashtag segmenter ({kind}): {found}{where} has sha256 {_sha256(found)}, training "
                                f"used {entry['sha256']} ({entry['path']})")
            elif given:
                located[key] = found
    groups, carried = {}, []
    needed = model_groups(config)
    embedding = record["groups"].get(TEXT_EMBEDDING)
    if TEXT_EMBEDDING in needed and embedding is None:
        problems.append(f"{TEXT_EMBEDDING}: the model reads the posts' sentence embeddings, but {path} does not "
                        f"record which encoder made them (written by an older cmkp-train): retrain the run")
    if embedding is not None and embedding.get("appends_ocr") and "ocr" not in needed:
        needed.insert(0, "ocr")         # the encoder read the OCR tokens, though the model does not
    pointed = {segmenter_key(e) for kind in SEGMENTER_FILES for e in record["text"].get(kind, [])}
    for group in needed:
        entry = record["groups"].get(group)
        if entry is None:
            continue            # the training shards lacked it: the model learned without it
        if entry["weights"] == CARRIED:
            carried.append(group)
            continue
        if group == "ocr" and not record.get("ocr_vocabulary"):
            problems.append(f"ocr: the OCR cleaning vocabulary was not recorded (expected "
                            f"{run_dir / FILES_DIR / 'ocr_vocabulary.json'})")
        if str(entry["weights"]).startswith("random("):
            groups[group] = entry       # seeded random weights: rebuilt from the seed
            continue
        if group in LOCATABLE:
            pointed.add(group)
        given = group in locate and group in LOCATABLE
        where = f" (given: locate {group}={locate[group]})" if given else ""
        try:
            weights = GROUP_FILES[group](entry, locate[group]) if given else GROUP_FILES[group](entry)
        except FileNotFoundError as err:
            hint = f"; {_hint(group)}" if group in LOCATABLE and not given else ""
            problems.append(f"{group}: {err}{where}{hint}")
            continue
        found = _sha256(weights)
        if found != entry["weights_sha256"]:
            problems.append(f"{group}: weights {weights}{where} have sha256 {found}, the training shards' features "
                            f"came from sha256 {entry['weights_sha256']} ({entry['weights']})")
            continue
        groups[group] = entry
        if given:
            located[group] = locate[group]
    for key in sorted(set(locate) - pointed):
        problems.append(f"locate {key}: not something this run points to outside itself (it points to: "
                        f"{', '.join(sorted(pointed)) or 'nothing'}; seeded random weights need no place)")
    if problems:
        raise FeaturisationError(f"{run_dir} cannot featurise new posts as its training posts were:\n  "
                                 + "\n  ".join(problems))
    return Featurisation(run_dir, record, groups, carried, located)
